"""Evaluation progress: a tqdm bar on a terminal, INFO lines every N % or N seconds elsewhere."""

from __future__ import annotations

import io

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from rsmae import progress as progress_module
from rsmae.progress import Progress, StepProgress, track

LOGGER = "rsmae.progress"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    screen = Terminal()
    with caplog.at_level("INFO", logger=LOGGER):
        assert list(track(range(5), "features train", unit="img", stream=screen)) == list(range(5))
    assert "features train:   0%|" in screen.getvalue() and "0/5 [" in screen.getvalue()  # tqdm's bar
    assert not _lines(caplog)


def test_a_log_file_gets_a_line_every_ten_percent_and_at_the_end(caplog: pytest.LogCaptureFixture) -> None:
    pipe = io.StringIO()  # not a terminal
    with caplog.at_level("INFO", logger=LOGGER), Progress(40, "scoring", unit="scene", stream=pipe) as bar:
        for _ in range(10):
            bar.update(3)  # 30 of 40: lines at 6, 12, 18, 24, 30 (>= 4 units apart)
        bar.update(10)
    assert pipe.getvalue() == ""
    lines = _lines(caplog)
    assert lines[0].startswith("scoring: 6/40 scene (15 %), ")
    assert lines[-1].startswith("scoring: 40/40 scene (100 %)")
    assert len(lines) == 6
    caplog.clear()
    with caplog.at_level("INFO", logger=LOGGER), Progress(40, "quiet", stream=pipe, enabled=False) as bar:
        bar.update(40)
    assert not _lines(caplog)


def test_a_slow_loop_logs_every_n_seconds(caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 25))  # each call 25 s later
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: float(next(clock)))
    with caplog.at_level("INFO", logger=LOGGER):
        for _ in track(iter(range(1000)), "reading", every_seconds=60, stream=io.StringIO(), total=None):
            pass  # stops before the clock runs out: 1000 items would need 25,000 s
            if len(_lines(caplog)) == 3:
                break
    assert _lines(caplog)[:2] == ["reading: 3 it, 75 s", "reading: 6 it, 150 s"]


def test_step_progress_follows_the_trainers_steps(caplog: pytest.LogCaptureFixture) -> None:
    model = torch.nn.Linear(2, 1)

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.model(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[StepProgress("tiny: training", every_percent=40)])
    with caplog.at_level("INFO", logger=LOGGER):
        trainer.fit(Tiny(), data)
    assert [line.split(",")[0] for line in _lines(caplog)] == [
        "tiny: training: 2/5 step (40 %)", "tiny: training: 4/5 step (80 %)",
        "tiny: training: 5/5 step (100 %)"]


@pytest.mark.slow
def test_evaluations_report_progress_in_a_log(tmp_path, caplog: pytest.LogCaptureFixture, bigearthnet_layout,
                                              multilabel_backbone) -> None:
    from rsmae.evaluation.change import evaluate_change
    from rsmae.evaluation.multilabel import evaluate_multilabel
    from tests.conftest import DATA

    with caplog.at_level("INFO", logger=LOGGER):
        evaluate_change(None, model="fc-siam-diff", test_root=DATA / "levircd_samples", dataset="levircd",
                        test_cities=["test_7_0256_0512"], crop_size=32, overlap=8, steps=2, batch_size=2,
                        accelerator="cpu")
        evaluate_multilabel(multilabel_backbone(tmp_path / "b.safetensors", 8), "knn",
                            bigearthnet_layout(tmp_path / "ben"))
    last = {line.rsplit(": ", 1)[0]: line for line in _lines(caplog)}  # the last line of each loop
    assert last["change: training"].startswith("change: training: 2/2 step (100 %)")
    assert last["change: scoring"].startswith("change: scoring: 1/1 scene (100 %)")
    assert last["statistics train"].startswith("statistics train: 3/3 patch (100 %)")
    assert last["features test"].startswith("features test: 2/2 patch (100 %)")
    caplog.clear()
    with caplog.at_level("INFO", logger=LOGGER):
        evaluate_multilabel(multilabel_backbone(tmp_path / "b.safetensors", 8), "knn",
                            bigearthnet_layout(tmp_path / "ben2"), progress=False)
    assert not _lines(caplog)
