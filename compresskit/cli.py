"""The ``compresskit`` command line: subcommands mirror the Python API.

``trace`` prints a model's channel groups; ``sparsify``, ``plan``, ``shrink``, ``recover`` and ``compress``
run the pipeline of :func:`compresskit.compress` from one job file (YAML or JSON) up to that stage, each
resuming from the checkpoints the previous one left in the job's output folder; ``report`` pretty-prints a
saved report (``distill`` is the old name of ``recover``, kept hidden with a note). Errors print one line
and exit with a non-zero code (``--traceback`` shows the rest).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from compresskit.config import CompressConfig, Config

__all__ = ["main", "JobConfig", "ModelSpec", "DataSpec", "build_model", "resolve_object"]


# ------------------------------------------------------------------------------------------------- job
class ModelSpec(Config):
    """The model to compress: a registered name or a ``module:factory`` path, optional checkpoint."""

    name: str = Field(..., description="registered model name (ck.list_models()) or 'package.module:factory'")
    checkpoint: Path | None = Field(None, description="weights loaded strictly into the model")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")


class DataSpec(Config):
    """Where batches come from: ``module:function(**kwargs)`` returning a train loader or (train, val)."""

    factory: str = Field(..., description="'package.module:function' returning train_loader or (train, val)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the function")


class JobConfig(Config):
    """A compress job: model, data, optional loss/metrics, teacher choice and the :class:`CompressConfig`."""

    model: ModelSpec
    data: DataSpec
    loss: str | None = Field(
        None, description="registered loss name (on output and batch[-1]) or 'module:fn(output, batch)'")
    metrics: dict[str, str] = Field(default_factory=dict, description="{name: 'module:fn(output, batch)'}")
    distill: bool = Field(False, description="distil from the original model even when "
                          "compress.recover.teacher is 'none' (the default, 'original', distils anyway)")
    compress: CompressConfig = Field(default_factory=CompressConfig)


def resolve_object(path: str, what: str) -> Any:
    """Import ``'package.module:attr.sub'`` (the current folder is importable)."""
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"{what}: expected 'package.module:name', got {path!r}")
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what}: cannot import module {module_name!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def build_model(spec: ModelSpec):
    """``ck.create_model`` for a registered name, else call the ``module:factory`` and load the checkpoint."""
    from torch import nn

    from compresskit.models import create_model, list_models, load_state_dict_strict

    if ":" not in spec.name:
        if spec.name not in list_models():
            known = ", ".join(list_models()) or "none"
            raise ValueError(f"model: {spec.name!r} is neither a registered model ({known}) "
                             "nor a 'package.module:factory' path")
        return create_model(spec.name, checkpoint=spec.checkpoint, **spec.kwargs)
    factory = resolve_object(spec.name, "model")
    if not callable(factory):
        raise ValueError(f"model: {spec.name!r} is not callable")
    model = factory(**spec.kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: {spec.name!r} returned {type(model).__name__}, expected an nn.Module")
    if spec.checkpoint is not None:
        load_state_dict_strict(model, spec.checkpoint)
    return model


def _loss(name: str | None) -> Callable | None:
    if name is None:
        return None
    if ":" in name:
        fn = resolve_object(name, "loss")
        if not callable(fn):
            raise ValueError(f"loss: {name!r} is not callable")
        return fn
    from compresskit.losses import get_loss

    pred_target = get_loss(name)

    def loss(output, batch):
        return pred_target(output, batch[-1])

    loss.__qualname__ = loss.__name__ = f"{name}(output, batch[-1])"
    loss.__module__ = "registered loss"
    return loss


def _loaders(spec: DataSpec):
    fn = resolve_object(spec.factory, "data")
    if not callable(fn):
        raise ValueError(f"data: {spec.factory!r} is not callable")
    out = fn(**spec.kwargs)
    if isinstance(out, tuple) and len(out) == 2:
        return out
    return out, None


def load_job(path: str, out: str | None, overrides: Sequence[str], target: str | None = None) -> JobConfig:
    """Read a job file, apply ``--out``, ``--target`` and ``--set key=value`` (keys of the compress
    section; a stage's setting as ``sparsify.steps=100``, ``recover.lr=1e-3``; flat legacy keys too)."""
    from compresskit.config import _LEGACY

    job = JobConfig.load(path)
    data = job.compress.model_dump()
    if "method" not in job.compress.sparsify.model_fields_set:
        del data["sparsify"]["method"]  # resolved from λ, not given: a --set sparsify.lambda_ decides it
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        head, _, rest = key.partition(".")
        if key in _LEGACY:
            head, rest = _LEGACY[key]
        if head not in CompressConfig.model_fields:
            known = ", ".join(CompressConfig.model_fields)
            raise ValueError(f"--set: unknown compress setting {key!r}; known: {known} (a stage's settings "
                             "as e.g. sparsify.steps)")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if rest:
            section = data.get(head)
            if not isinstance(section, dict):
                raise ValueError(f"--set: {head!r} has no settings of its own; use {head}=VALUE")
            sub_model = CompressConfig.model_fields[head].annotation
            if isinstance(sub_model, type) and rest not in sub_model.model_fields:
                raise ValueError(f"--set: unknown setting {key!r}; {head} has "
                                 f"{', '.join(sub_model.model_fields)}")
            section[rest] = parsed
        else:
            data[head] = parsed
    if target is not None:
        data["target"] = target
    if out is not None:
        data["out_dir"] = out
    return job.model_copy(update={"compress": CompressConfig.model_validate(data)})


# -------------------------------------------------------------------------------------------- commands
def _cmd_trace(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from compresskit.graph.trace import trace

    try:
        kwargs = json.loads(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--kwargs: expected a JSON object such as '{{\"width\": 32}}' ({e})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--kwargs: expected a JSON object such as '{{\"width\": 32}}', got {args.kwargs!r}")
    model = build_model(ModelSpec(name=args.model, checkpoint=args.checkpoint, kwargs=kwargs)).eval()
    if not args.input:
        raise ValueError("--input: give the shape of each positional input, e.g. --input 1,3,64,64")
    inputs = tuple(torch.zeros(_shape(s)) for s in args.input)
    graph = trace(model, inputs)
    console = Console()
    console.print(graph.summary())
    n_prunable = sum(g.prunable for g in graph.groups)
    console.print(f"{len(graph.groups)} groups, {n_prunable} prunable")
    if args.json:
        from compresskit.io import atomic_write_json

        atomic_write_json(graph.to_dict(), args.json)
        console.print(f"wrote {args.json}")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    parts = [x.strip() for x in text.replace("x", ",").split(",")]
    if not all(x.isdigit() and int(x) > 0 for x in parts):
        raise ValueError(f"--input: expected a shape like 1,3,64,64 or 1x3x64x64, got {text!r}")
    return tuple(int(x) for x in parts)


def code_in_job(job: JobConfig) -> list[str]:
    """The ``module:function`` references of a job file (each imports and runs Python code), as
    ``"setting 'value'"``: a model factory, the data function, a loss, the metrics."""
    refs = [("model.name", job.model.name), ("data.factory", job.data.factory), ("loss", job.loss or ""),
            *((f"metrics.{k}", v) for k, v in job.metrics.items())]
    return [f"{where} {value!r}" for where, value in refs if ":" in value]


def check_job_trusted(job: JobConfig, path: str, trusted: bool) -> None:
    """A job file runs registered models and losses; code it names (``module:function``) only with
    ``--trusted``: a job file from elsewhere could name ``os:system``."""
    code = code_in_job(job)
    if code and not trusted:
        raise ValueError(f"{path}: the job file names Python code to import and run ({'; '.join(code)}); "
                         "a job file runs registered models and losses only, unless you pass --trusted "
                         "(for job files you wrote or trust: it runs whatever they name; see docs/safety.md)")


def _run_stage(args: argparse.Namespace, stop_after: str | None, force_distill: bool = False) -> int:
    from compresskit.api import compress

    job = load_job(args.job, args.out, args.set or [], getattr(args, "target", None))
    check_job_trusted(job, args.job, getattr(args, "trusted", False))  # before anything is imported
    if stop_after is not None and job.compress.out_dir is None:
        raise ValueError(f"{args.command}: the stages share an output folder; set compress.out_dir in "
                         f"{args.job} or pass --out DIR")
    model = build_model(job.model)
    train_loader, val_loader = _loaders(job.data)
    metrics = {name: resolve_object(path, f"metrics.{name}") for name, path in job.metrics.items()}
    teacher = model if (job.distill or force_distill) else None
    result = compress(model, train_loader, loss_fn=_loss(job.loss), config=job.compress, teacher=teacher,
                      val_loader=val_loader, metrics=metrics or None, stop_after=stop_after)
    from rich.console import Console

    console = Console()
    if stop_after == "sparsify":
        from compresskit.measure.density import density_table

        densities = {r.name: r.density for r in result.report.layers if r.density is not None}
        console.print(density_table(densities))
    elif stop_after == "plan":
        console.print(result.plan.explain())
    if job.compress.out_dir is not None:
        console.print(f"outputs in {job.compress.out_dir}/")
    return 0


def _stage_command(stop_after: str | None, force_distill: bool,
                   new_name: str | None = None) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        if new_name is not None:  # a renamed command still runs, with a note
            print(f"FutureWarning: 'compresskit {args.command}' is now 'compresskit {new_name}'; the old "
                  "name will be removed in a future version", file=sys.stderr)
        return _run_stage(args, stop_after, force_distill)

    return command


def _cmd_list_models(args: argparse.Namespace) -> int:
    from compresskit.models import list_models, model_info

    names = list_models(args.pattern)
    width = max((len(n) for n in names), default=0)
    for name in names:
        info = model_info(name)
        print(f"{name:<{width}}  {info.plugin or '':<20} {info.description}".rstrip())
    if not names:
        print("no registered models" + (f" match {args.pattern!r}" if args.pattern else
                                         " (install a plugin, e.g. compresskit-stmfnet)"))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from compresskit.report import CompressReport, print_report

    path = Path(args.report)
    if path.is_dir():
        path = path / "report.json"
    print_report(CompressReport.load(path), Console())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from compresskit.export_saved import export_saved

    result = export_saved(args.run, args.out, trusted=args.trusted, rtol=args.rtol, atol=args.atol,
                          dynamic=not args.static)
    print(result.summary())
    for note in result.notes:
        print(f"note: {note}")
    return 0


# ----------------------------------------------------------------------------------------------- parser
_JOB_EXAMPLE = """\
job file (YAML or JSON; 'module:function' entries run Python code, so they need --trusted):
  model: {name: my_pkg.models:make_net, checkpoint: net.pth, kwargs: {width: 64}}
  data: {factory: my_pkg.data:loaders, kwargs: {crop: 64}}   # returns train or (train, val)
  loss: l1                         # registered loss on (output, batch[-1]), or my_pkg.losses:fn
  metrics: {psnr: my_pkg.metrics:psnr}
  distill: true                    # distil from the original model (also compress.recover's default)
  compress:
    target: 4x params              # or "50% macs", "2x latency"; default 2x macs
    sparsify: {steps: 500}         # lambda_ calibrated from the target ("auto"), or a number
    recover: {steps: 500, lr: 1.0e-3}
    out_dir: runs/net
"""


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="compresskit", formatter_class=fmt,
        description="Make neural networks smaller: trace channel groups, sparsify with OBProx-SG, plan "
                    "widths, shrink, distill.",
        epilog="examples:\n  compresskit trace my_pkg.models:make_net --input 1,3,64,64\n"
               "  compresskit compress job.yaml --out runs/net --trusted\n"
               "  compresskit report runs/net/report.json\n\n"
               "run 'compresskit COMMAND --help' for each command's options.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("trace", formatter_class=fmt, help="print the channel groups of a model",
                       description="Trace a model with torch.fx and print its channel groups.",
                       epilog="examples:\n  compresskit trace stmfnet_mini --input 1,3,64,64 "
                              "--input 1,3,64,64 --input 1,3,64,64 --input 1,3,64,64\n"
                              "  compresskit trace my_pkg.models:make_net --kwargs '{\"width\": 32}' "
                              "--input 1,3,32,32 --json groups.json")
    p.add_argument("model", help="registered model name or 'package.module:factory'")
    p.add_argument("--input", action="append", metavar="SHAPE",
                   help="shape of one positional input, e.g. 1,3,64,64 (repeat for each input)")
    p.add_argument("--kwargs", help="factory keyword arguments as a JSON object")
    p.add_argument("--checkpoint", help="weights to load first")
    p.add_argument("--json", help="also write the groups as JSON to this file")
    p.set_defaults(func=_cmd_trace)

    stages = {
        "sparsify": ("run stage I: l1-regularised training with OBProx-SG", "sparsify"),
        "plan": ("sparsify (or reuse it), read densities and plan widths", "plan"),
        "shrink": ("... and shrink into the smaller dense model", "shrink"),
        "recover": ("... and recover the small model's quality by distilling from the original", None),
        "compress": ("run every stage of the job (distilling when the job says so)", None),
    }
    renamed = {"distill": "recover"}  # old command name -> the stage's name: still parsed, not listed
    for name, (text, stop) in [*stages.items(), *((old, stages[new]) for old, new in renamed.items())]:
        listed = {"help": text} if name in stages else {}
        p = sub.add_parser(name, formatter_class=fmt, **listed, description=text[0].upper() + text[1:] + ". "
                           "Stages checkpoint into the job's out_dir; a rerun resumes where it stopped.",
                           epilog=f"example:\n  compresskit {name} job.yaml --out runs/net "
                                  "--target '4x params' --set sparsify.steps=200 --trusted\n\n"
                                  + _JOB_EXAMPLE)
        p.add_argument("job", help="job file (.yaml, .yml or .json)")
        p.add_argument("--out", help="output folder (overrides compress.out_dir)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a compress setting, e.g. sparsify.steps=200 or recover.lr=1e-3")
        p.add_argument("--target", help="what to reach: '4x params', '50%% macs', '2x latency' "
                                        "(overrides compress.target)")
        p.add_argument("--trusted", action="store_true",
                       help="allow the job file to name Python code ('module:function' as model factory, "
                            "data, loss or metric); without it only registered names run")
        new = renamed.get(name)
        p.set_defaults(func=_stage_command(stop, force_distill=(new or name) == "recover", new_name=new))

    p = sub.add_parser("list-models", formatter_class=fmt, help="list the registered model names",
                       description="List the models plugins registered (names for a job file's model.name, "
                                   "--model of the plugins' commands and ck.create_model).",
                       epilog="examples:\n  compresskit list-models\n  compresskit list-models 'stmfnet*'")
    p.add_argument("pattern", nargs="?", help="a glob such as 'adacof*'")
    p.set_defaults(func=_cmd_list_models)

    p = sub.add_parser("report", formatter_class=fmt, help="pretty-print a saved report",
                       description="Print a report.json written by compress as rich tables.",
                       epilog="examples:\n  compresskit report runs/net/report.json\n"
                              "  compresskit report runs/net")
    p.add_argument("report", help="report.json, or the output folder holding it")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("export", formatter_class=fmt,
                       help="write the compressed model as a checked ONNX file",
                       description="Export the model of a run (or a file written by CompressResult.save) to "
                                   "ONNX with dynamic batch and spatial sizes where the model allows, and "
                                   "check it in ONNX Runtime against PyTorch on the example inputs and on a "
                                   "second size; no file is written unless it matches. Needs "
                                   "pip install 'compresskit[onnx]'.",
                       epilog="examples:\n  compresskit export runs/net --onnx\n"
                              "  compresskit export runs/net/compressed.pt --onnx --out small.onnx")
    p.add_argument("run", metavar="RUN_DIR", help="output folder of compress, or the model file itself")
    p.add_argument("--onnx", action="store_true", help="write ONNX (the one format; the default)")
    p.add_argument("--out", help="the .onnx file to write (default: beside the model file)")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="relative tolerance of the check (of max|output|)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the check")
    p.add_argument("--static", action="store_true", help="fix every size to the example inputs'")
    p.add_argument("--trusted", action="store_true",
                   help="unpickle a file that needs it (only files you trust)")
    p.set_defaults(func=_cmd_export)
    return parser


def _one_line(e: BaseException) -> str:
    if isinstance(e, ValidationError):
        parts = [f"{'.'.join(str(x) for x in err['loc']) or e.title}: {err['msg']}" for err in e.errors()]
        return f"invalid {e.title}: " + "; ".join(parts)
    text = (str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)).strip().splitlines()
    first = text[0] if text else type(e).__name__
    return first if type(e) in (ValueError, FileNotFoundError) else f"{type(e).__name__}: {first}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``compresskit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _warning_line
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("compresskit: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if args.traceback:
            raise
        print(f"compresskit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = formatwarning


def _warning_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"compresskit: warning: {str(message).splitlines()[0]}\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
