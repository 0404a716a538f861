"""The progress module: the training line (rates, ETA, throttling, lead process only) and the sampling bar."""

import io

from cdiff_jax import progress as P
from cdiff_jax.progress import ProgressLine, SamplingBar, format_eta


def test_format_eta():
    cases = {-5: "0s", 0: "0s", 59.9: "59s", 61: "1m01s", 3600: "1h00m", 14310.85: "3h58m", 90000: "1d01h"}
    assert {s: format_eta(s) for s in cases} == cases


def test_progress_line_rates_eta_and_throttling():
    now = [0.0]
    out = io.StringIO()
    progress = ProgressLine(50000, every_seconds=100.0, stream=out, clock=lambda: now[0])
    for t, step in [(0.0, 859), (50.0, 1000), (99.9, 1150)]:  # the first update starts the clock
        now[0] = t
        progress.update(step, {"loss": 0.5}, examples_per_step=8)
    assert out.getvalue() == ""
    now[0] = 100.0
    progress.update(1200, {"loss": 0.0213}, examples_per_step=8)  # 341 steps in 100 s
    assert out.getvalue() == "step 1200/50000  loss 0.0213  3.41 steps/s  27.3 ex/s  ETA 3h58m\n"
    now[0] = 150.0
    progress.update(20000, {"loss": 0.01})
    now[0] = 160.0
    progress.update(50000, {"loss": 0.01})  # the last step always prints; rate since the last print
    assert out.getvalue().splitlines()[1:] == ["step 50000/50000  loss 0.01  813.33 steps/s  ETA 0s"]


def test_progress_line_final_step_without_history():
    out = io.StringIO()
    ProgressLine(5, stream=out, clock=lambda: 0.0).update(5, {"loss": 1.0})
    assert out.getvalue() == "step 5/5  loss 1\n"


def test_progress_line_is_silent_off_the_lead_process(monkeypatch):
    monkeypatch.setattr(P.jax, "process_index", lambda: 1)
    out = io.StringIO()
    ProgressLine(5, stream=out, clock=lambda: 0.0).update(5, {"loss": 1.0})
    assert out.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_sampling_bar_names_compiling_steps_then_decoding(monkeypatch):
    monkeypatch.setattr(P.sys, "stderr", Terminal())
    with SamplingBar("sampling") as reporter:
        assert "compiling" in reporter._bar.desc
        for done in range(1, 5):
            reporter(done, 4)
            if done < 4:
                assert reporter._bar.desc == "sampling: steps" and reporter._bar.n == done
        assert reporter._bar.desc == "sampling: decoding" and reporter._bar.total == 4
        reporter(1, 4)  # a second sampling call restarts the count
        assert reporter._bar.n == 1 and reporter._bar.desc == "sampling: steps"
    assert "4/4" in P.sys.stderr.getvalue()


def test_bars_stay_off_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(P.sys, "stderr", io.StringIO())
    with P.bar(3, "quiet") as progress:
        progress.update(3)
    assert P.sys.stderr.getvalue() == ""
