"""``diffspeed cache`` commands."""

from diffspeed.cli import main


def test_methods_lists_every_cache(capsys):
    assert main(["cache", "methods"]) == 0
    out = capsys.readouterr().out
    for name in ("deepcache", "fora", "first_block", "teacache", "taylorseer", "condition"):
        assert name in out


def test_sample_with_a_cache(tmp_path, capsys):
    out = tmp_path / "g.png"
    cfg = '{"method": "deepcache", "interval": 2, "branch": 1}'
    args = ["cache", "sample", cfg, "--steps", "4", "--labels", "1,2", "--per-label", "1"]
    assert main([*args, "--threads", "1", "--out", str(out)]) == 0
    assert out.is_file() and "2/4 full" in capsys.readouterr().out


def test_bad_config_is_a_clean_error(tmp_path, capsys):
    assert main(["cache", "sample", '{"method": "deepcache", "interval": 0}']) == 2
    assert ">= 1" in capsys.readouterr().err
