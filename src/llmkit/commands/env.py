"""`llmkit env`: versions and devices, for bug reports."""

import typer

from llmkit.commands._options import JsonOpt
from llmkit.commands._runtime import Output, console, examples


def register(app: typer.Typer) -> None:
    app.command("env", epilog=examples("llmkit env", "llmkit env --json > env.json"))(env)


def env(json_: JsonOpt = False) -> None:
    """Versions of Python and every dependency, devices, CUDA and bf16, bitsandbytes and DeepSpeed backends."""
    from llmkit.environment import collect

    Output(json_).result(collect(), render)


def render(report) -> None:
    from rich.table import Table

    table = Table(title=f"llmkit {report.llmkit}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("python", report.python)
    table.add_row("platform", report.platform)
    table.add_row("cpu cores", str(report.cpu_count))
    for name, version in report.packages.items():
        table.add_row(name, version or "[red]not installed[/red]")
    table.add_row("torch threads", str(report.torch_threads))
    table.add_row("cuda", f"{report.cuda_version} (available)" if report.cuda_available else "not available")
    for device in report.devices:
        memory = f", {device['memory_bytes'] / 2**30:.1f} GiB" if "memory_bytes" in device else ""
        table.add_row(f"device {device['index']}", device["name"] + memory)
    table.add_row("bf16 on GPU", "yes" if report.bf16_supported else "no")
    table.add_row("bitsandbytes backend", report.bitsandbytes_backend or "-")
    table.add_row("deepspeed accelerator", report.deepspeed_accelerator or "-")
    table.add_row("hugging face hub", report.hub_offline_reason or "reachable")
    out = console()
    out.print(table)
    for problem in report.problems:
        out.print(f"[yellow]problem:[/yellow] {problem}", markup=True)
