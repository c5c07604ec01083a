"""The command (circuitserve.py): bad arguments end in one clear line and exit status 2, before any
training starts."""

from typer.testing import CliRunner

from circuitserve import app


def test_train_refuses_an_unknown_family_and_bad_levels(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--family", "nope"])
    assert result.exit_code == 2 and "unknown model family 'nope'; known: nac" in result.output
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--levels", "1,1/2,0.5"])
    assert result.exit_code == 2 and "duplicate level" in result.output
    assert not (tmp_path / "x").exists()


def test_help_lists_the_default_levels():
    result = CliRunner().invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "1,1/2,1/4,1/8" in result.output


def test_export_takes_a_version_and_serve_a_repository(tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--version", "0"])
    assert result.exit_code == 2 and "--version" in result.output
    import service.app
    from service.settings import Settings

    seen: list[Settings] = []
    monkeypatch.setattr(service.app, "serve", seen.append)
    result = CliRunner().invoke(app, ["serve", "--repository", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen[0].repository == tmp_path and seen[0].bundles == []  # no default bundle trained
    result = CliRunner().invoke(app, ["serve", "--repository", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "repository directory not found" in result.output


def test_serve_refuses_bad_workers_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--workers", "0"])
    assert result.exit_code == 2 and "error: invalid settings: workers:" in result.output
    assert "--workers or CIRCUITSERVE_WORKERS" in result.output
