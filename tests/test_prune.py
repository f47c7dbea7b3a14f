"""``tdabench verify --prune``: what the harness set aside instead of deleting (ground-truth caches built by
other code, unreadable files) is listed by ``verify`` and deleted by ``--prune``; nothing current is touched."""
from __future__ import annotations

from tdabench import cli


def test_verify_lists_and_prune_deletes_only_what_was_set_aside(tmp_path, capsys):
    results = tmp_path / "results"
    current = results / "ground_truth" / "digits" / "abc"
    aside = results / "ground_truth" / "digits" / "abc.stale0"
    for folder in (current, aside / "pieces"):
        folder.mkdir(parents=True)
    (current / "masks.pt").write_bytes(b"x" * 1000)
    (aside / "pieces" / "k00000_r000.pt").write_bytes(b"y" * 3 * 2**20)       # 3 MB set aside
    runs = results / "runs" / "digits" / "if" / "key"
    runs.mkdir(parents=True)
    (runs / "seed0.scores.pt.corrupt0").write_bytes(b"z" * 2**20)               # an unreadable score matrix
    (runs / "seed1.scores.pt").write_bytes(b"s")

    cli.main(["verify", "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert "2 cache(s) and file(s) set aside" in out and "4.0 MB" in out and "verify --prune" in out
    assert aside.exists()                                                      # verify alone deletes nothing

    cli.main(["verify", "--results-dir", str(results), "--prune"])
    out = capsys.readouterr().out
    assert f"removed {aside}" in out and "pruned 2 set-aside or outdated cache(s) and file(s), 4.0 MB freed" in out
    assert not aside.exists() and not (runs / "seed0.scores.pt.corrupt0").exists()
    assert (current / "masks.pt").exists() and (runs / "seed1.scores.pt").exists()
    cli.main(["verify", "--results-dir", str(results)])
    assert "set aside" not in capsys.readouterr().out


def test_prune_deletes_method_caches_of_other_code_only(tmp_path, capsys):
    """A method's cache folder is named by its code fingerprint: one named otherwise was made by other code
    and no current run reads it (the TRAK features of old code had piled up to 30 GB here); the current
    one, and a cache of a method not installed, are kept."""
    from tdabench.api.registry import METHODS
    from tdabench.engine.fingerprint import digest, fingerprint

    results = tmp_path / "results"
    code = digest(fingerprint(METHODS.get("trak")))
    current, old = (results / "cache" / "trak" / "digits" / name for name in (code, "0123456789abcdef"))
    unknown = results / "cache" / "not-a-method" / "digits" / "0123456789abcdef"
    for folder in (current, old, unknown):
        folder.mkdir(parents=True)
        (folder / "features.pt").write_bytes(b"f" * 2**20)
    (old.parent / (old.name + ".lock")).write_bytes(b"")

    cli.main(["verify", "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert "1 method cache(s) made by other code, 1.0 MB" in out and old.exists()
    cli.main(["verify", "--results-dir", str(results), "--prune"])
    out = capsys.readouterr().out
    assert f"removed {old}" in out and "pruned 2 set-aside or outdated cache(s) and file(s), 1.0 MB freed" in out
    assert not old.exists() and not (old.parent / (old.name + ".lock")).exists()
    assert (current / "features.pt").exists() and (unknown / "features.pt").exists()
