"""Students: the w-conditioned UNet, save / load / sample with the recorded recipe, the CLI
and the bench row."""

import pytest
import torch
from distill_toys import AC, NULL, TINY_UNET, tiny_unet

from diffspeed.core.adapters import DiscreteVPDenoiser
from diffspeed.distill.students import (
    Recipe,
    load_student,
    make_student,
    sample_student,
    save_student,
)
from diffspeed.distill.wcond import WCondUNet, build_wcond
from diffspeed.errors import ConfigError, ShapeError, UnsupportedModelError, WeightsError
from diffspeed.models.io import atomic_write_json, save_weights
from diffspeed.models.teacher import digits_cond_spec
from diffspeed.solvers.schedules import get_sigmas

X = torch.randn(4, 1, 8, 8)
T = torch.tensor([3.0, 250.5, 600.0, 999.0])
Y = torch.tensor([1, 5, NULL, 9])


def test_wcond_starts_equal_to_the_unet_for_every_scale():
    unet = tiny_unet()
    with torch.no_grad():
        ref = unet(X, T, class_labels=Y).sample
        w = WCondUNet(unet)
        for scale in (0.0, 1.0, torch.tensor([1.0, 2.0, 3.5, 4.0])):
            assert torch.equal(w(X, T, Y, scale), ref)


def test_wcond_scale_matters_once_trained_and_round_trips():
    w = WCondUNet(tiny_unet())
    with torch.no_grad():
        w.unet.class_embedding.w_mlp[2].weight.normal_()
        assert not torch.allclose(w(X, T, Y, 1.0), w(X, T, Y, 3.0))
    back = build_wcond(w.config())
    back.load_state_dict(w.state_dict())
    assert w.config()["kind"] == "wcond_unet"
    with torch.no_grad():
        assert torch.equal(back(X, T, Y, 3.0), w(X, T, Y, 3.0))
    with pytest.raises(ShapeError):
        w(X, T, Y, torch.ones(3))


def test_wcond_needs_a_class_embedding():
    from diffusers import UNet2DModel

    cfg = {k: v for k, v in TINY_UNET.items() if k != "num_class_embeds"}
    with pytest.raises(UnsupportedModelError, match="class embedding"):
        WCondUNet(UNet2DModel(**cfg))


def teacher():
    den = DiscreteVPDenoiser(tiny_unet().eval().requires_grad_(False), AC, "epsilon")
    den.cond_spec = digits_cond_spec(NULL)
    return den


@pytest.mark.parametrize("wcond", [False, True])
def test_save_load_sample_round_trip(tmp_path, wcond):
    student = make_student(teacher(), "v", w_conditioned=wcond)
    sig = get_sigmas(student, "trailing", 3)
    recipe = Recipe(
        "ddim", tuple(sig.tolist()), 2.0, w_conditioned=wcond, w_range=(1.0, 4.0) if wcond else None
    )
    path = save_student(tmp_path / "s.safetensors", student, recipe, method="test")
    den, back = load_student(path)
    assert back == recipe and den.prediction == "v_prediction"
    # a w-conditioned student also declares the guidance scale it takes
    assert den.cond_spec.keys == ("class_labels",) + (("guidance_scale",) if wcond else ())
    assert int(den.cond_spec.uncond["class_labels"]) == NULL
    noise, y = torch.randn(5, 1, 8, 8), torch.arange(5)
    x, info = sample_student((den, back), noise, y, return_info=True)
    assert info["nfe"] == 3 and info["sigmas"] == list(recipe.sigmas)
    with torch.no_grad():
        expected = sample_student((student.eval(), recipe), noise, y)
    torch.testing.assert_close(x, expected)
    if not wcond:
        with pytest.raises(ConfigError, match="bakes in guidance"):
            sample_student((den, back), noise, y, guidance=3.0)


def test_int8_storage_is_small_and_close(tmp_path):
    student = make_student(teacher(), "v")
    recipe = Recipe("ddim", (80.0, 1.0, 0.0))
    a = save_student(tmp_path / "a.safetensors", student, recipe)
    b = save_student(tmp_path / "b.safetensors", student, recipe, int8=True)
    # the weights (the file less its header, which holds the same config in both) halve
    payload = [p.stat().st_size - int.from_bytes(p.read_bytes()[:8], "little") for p in (a, b)]
    assert payload[1] < 0.5 * payload[0]
    da, _ = load_student(a)
    db, _ = load_student(b)
    s = torch.full((4,), 2.0)
    with torch.no_grad():
        err = (da(X, s, class_labels=Y) - db(X, s, class_labels=Y)).abs().max()
    assert err < 0.05


def test_bad_student_files_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="no student"):
        load_student("no-such-student")
    save_weights(tmp_path / "x.safetensors", {"a": torch.ones(2)})
    with pytest.raises(WeightsError, match="JSON config"):
        load_student(tmp_path / "x.safetensors")
    atomic_write_json(tmp_path / "x.json", {"kind": "something else"})
    with pytest.raises(WeightsError, match="not a diffspeed student"):
        load_student(tmp_path / "x.safetensors")


def test_bench_student_row(tmp_path):
    from diffspeed.bench.config import Row
    from diffspeed.bench.methods import BenchContext, build_generator, load_method_modules
    from diffspeed.distill.methods import bench_rows

    # the distilled students' row kinds come from the DISTILLERS registry
    assert set(bench_rows()) == {"student", "consistency", "lcm-lora"}
    load_method_modules()

    student = make_student(teacher(), "v", w_conditioned=True)
    sig = get_sigmas(student, "trailing", 2)
    recipe = Recipe("ddim", tuple(sig.tolist()), 2.0, w_conditioned=True, w_range=(1.0, 4.0))
    path = save_student(tmp_path / "g.safetensors", student, recipe)
    ctx = BenchContext(teacher(), (1, 8, 8), 2.0, torch.device("cpu"), 0)
    gen = build_generator(Row(method="student", student=str(path), guidance=3.0), ctx)
    out = gen.generate(torch.randn(3, 1, 8, 8), {"class_labels": torch.arange(3)}, [0, 1, 2])
    assert out.shape == (3, 1, 8, 8) and gen.nfe == 2 and gen.model_size_bytes > 0
    with pytest.raises(ConfigError, match="samples in 2 steps"):
        build_generator(Row(method="student", student=str(path), steps=4), ctx)


def tiny_teacher_file(tmp_path):
    from diffspeed.models.teacher import SCHEDULER_CONFIG

    cfg = {"unet": TINY_UNET, "scheduler": SCHEDULER_CONFIG, "null_label": NULL}
    path = tmp_path / "teacher.safetensors"
    save_weights(path, tiny_unet().state_dict(), cfg)
    atomic_write_json(path.with_suffix(".json"), cfg)
    return path


def test_cli_progressive_guided_kd(tmp_path, capsys):
    from diffspeed.cli import main

    t = str(tiny_teacher_file(tmp_path))
    common = ["--teacher", t, "--batch-size", "8", "--steps", "2", "--no-progress"]
    out = tmp_path / "prog"
    assert main(["distill", "progressive", "--out", str(out), "--teacher-steps", "4", *common]) == 0
    den, recipe = load_student(out / "round-1" / "student.safetensors")
    assert recipe.steps == 1 and recipe.guidance == 2.0
    # an existing run is not overwritten without --resume; with it, finished rounds are kept
    assert main(["distill", "progressive", "--out", str(out), "--teacher-steps", "4", *common]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (
        main(
            [
                "distill",
                "progressive",
                "--out",
                str(out),
                "--teacher-steps",
                "4",
                "--resume",
                *common,
            ]
        )
        == 0
    )
    out = tmp_path / "guided"
    assert (
        main(
            [
                "distill",
                "guided",
                "--out",
                str(out),
                "--teacher-steps",
                "2",
                *common,
            ]
        )
        == 0
    )
    den, recipe = load_student(out / "round-1" / "student.safetensors")
    assert recipe.w_conditioned and recipe.w_range == (1.0, 4.0)
    # stage 1 keeps the teacher's eps output (starts exact); stage 2 switches to v
    assert load_student(out / "stage1" / "student.safetensors")[0].prediction == "epsilon"
    assert den.prediction == "v_prediction"
    out = tmp_path / "kd"
    assert (
        main(
            [
                "distill",
                "kd",
                "--out",
                str(out),
                "--teacher-steps",
                "2",
                "--num-pairs",
                "16",
                *common,
            ]
        )
        == 0
    )
    assert load_student(out / "student.safetensors")[1].steps == 1


def test_cli_consistency_methods_ship_and_sample(tmp_path, monkeypatch):
    import diffspeed.distill.students as students
    from diffspeed.cli import main
    from diffspeed.distill.consistency import load_consistency
    from diffspeed.distill.lora import read_lora

    monkeypatch.setattr(students, "STUDENTS_DIR", tmp_path / "assets")
    (tmp_path / "assets").mkdir()
    t = str(tiny_teacher_file(tmp_path))
    common = ["--teacher", t, "--batch-size", "4", "--steps", "2", "--no-progress"]
    cd = ["--n-start", "4", "--n-end", "4", "--solver", "ddim", "--ship", "cd"]
    cd += ["--eval-every", "2", "--eval-samples", "10"]
    # the former command name is an alias of distill
    assert main(["consistency", "cd", "--out", str(tmp_path / "cd"), *cd, *common]) == 0
    header = (tmp_path / "cd" / "eval_log.csv").read_text().splitlines()[0]
    assert header == "step,fdd1,accuracy1,fdd4,accuracy4"
    den, recipe = load_consistency(tmp_path / "assets" / "cd.safetensors")
    assert recipe.solver == "lcm" and den.strength == 0.6
    out = tmp_path / "lora"
    assert main(["distill", "lcm-lora", "--out", str(out), "--rank", "2", *common]) == 0
    _, lora, info = read_lora(out / "lora")
    assert lora.rank == 2 and info["method"] == "lcm-lora" and info["objective"] == "lcm"
    png = tmp_path / "s.png"
    args = ["--student", str(tmp_path / "cd" / "student.safetensors"), "--per-label", "1"]
    assert main(["distill", "sample", *args, "--steps", "1", "--out", str(png)]) == 0
    assert png.is_file()
    assert main(["distill", "lcm", "--out", str(tmp_path / "x"), "--w-range", "3,1", *common]) == 2


def test_cli_options_come_from_every_config_field():
    from dataclasses import fields

    from diffspeed.cli import build_parser
    from diffspeed.distill import DISTILLERS, TrainConfig
    from diffspeed.distill.cli import field_help

    assert set(field_help(TrainConfig)) == {f.name for f in fields(TrainConfig)}
    parser = build_parser()
    for name in DISTILLERS:
        cls = DISTILLERS[name]
        helps = field_help(cls)
        assert set(helps) == {f.name for f in fields(cls)}, name  # every field documented
        assert all(helps.values()), name
        args = parser.parse_args(["distill", name, "--out", "x"])
        assert args.func.args == (cls,)
        defaults = {f.name: getattr(args, f"cfg_{f.name}") for f in fields(cls)}
        assert cls(**defaults) == cls()  # the options' defaults are the config's
