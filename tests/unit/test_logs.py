"""Diagnostics: rank 0 alone by default, every rank (prefixed) on request, the message alone
on stdout (warnings on stderr) - the console format of the prints they replace."""

from __future__ import annotations

from megatron_sail.utils.logs import ALL_RANKS_ENV, get_logger


def test_rank_zero_alone_by_default(capsys, monkeypatch):
    log = get_logger("megatron_sail.test_logs")
    monkeypatch.delenv(ALL_RANKS_ENV, raising=False)
    monkeypatch.setenv("RANK", "1")
    log.info("saved checkpoint %s", "x")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    log.info("saved checkpoint %s", "x")
    log.warning("careful")
    captured = capsys.readouterr()
    assert captured.out == "saved checkpoint x\n" and captured.err == "careful\n"


def test_every_rank_on_request(capsys, monkeypatch):
    log = get_logger("megatron_sail.test_logs")
    monkeypatch.setenv(ALL_RANKS_ENV, "1")
    for rank in ("0", "3"):
        monkeypatch.setenv("RANK", rank)
        log.info("resumed from %s", "ckpt")
    assert capsys.readouterr().out == "[rank 0] resumed from ckpt\n[rank 3] resumed from ckpt\n"
    consoles = [h for h in get_logger("megatron_sail.test_logs").handlers
                if type(h).__name__ == "_Console"]
    assert len(consoles) == 1  # set up once, however often asked for
