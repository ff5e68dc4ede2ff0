"""What the training commands (`pretrain`, `sft`, `peft`) share in the CLI: running the training with Ctrl-C and
launcher handling, and rendering a finished run. Their options are generated from the config blocks."""

import typer

from llmkit.commands._runtime import Output, console


def render_run(title: str, result, rows: list[tuple[str, str]], closing: str | None = None) -> None:
    """A finished training run, for people: its loss curve and final loss, the command's own rows, the files written
    and where the model (or adapter) is."""
    from rich.table import Table

    out = console()
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("loss curve", result.sparkline)
    if result.train_loss is not None:
        table.add_row("final train loss", f"{result.train_loss:.4f}")
    for what, value in rows:
        table.add_row(what, value)
    for source in result.eval_by_source or []:
        before = f" (before: {source['initial_eval_loss']:.4f})" if source["initial_eval_loss"] is not None else ""
        after = "-" if source["eval_loss"] is None else f"{source['eval_loss']:.4f}"
        table.add_row(f"eval loss {source['name']}", f"{after}{before} on {source['source']}")
    for source in result.data_mix or []:
        weight = "" if source["weight"] is None else f", weight {source['weight']:g}"
        table.add_row(f"mix: {source['source']}", f"{source['share_of_tokens']:.1%} of tokens: {source['rows']:,} "
                                                  f"rows, {source['tokens']:,} tokens{weight}")
    out.print(table)
    out.print("written:", markup=False)
    for name, path in result.files.items():
        out.print(f"  {name.replace('_', ' ')}: {path}", markup=False, soft_wrap=True)
    if closing:
        out.print(closing, markup=False, soft_wrap=True)


def run_training(run, cfg, out: Output):
    """Run a training function (run_pretrain, run_sft) with `out`'s reporter and return its result for
    `out.result`; after Ctrl-C's checkpoint, tell the user how to continue and exit 130 (the CLI maps
    KeyboardInterrupt), or 143 after SIGTERM. Under a launcher (RANK set) the ranks other than 0 report nothing and
    exit 0 after training, so the result is printed once."""
    from llmkit.training.integrations import is_main_process
    from llmkit.training.run import TrainingInterrupted

    main = is_main_process()
    if main:
        report = out.report
    else:   # under a launcher every rank runs this command: RANK 0 alone reports and prints the result
        from llmkit.ui import SilentReporter

        report = SilentReporter()
    try:
        result = run(cfg, reporter=report)
    except TrainingInterrupted as stop:
        import signal

        terminated = stop.signum == signal.SIGTERM
        report.warn(f"{'terminated (SIGTERM)' if terminated else 'interrupted'} at step {stop.result.steps}; "
                    f"checkpoint: {stop.result.checkpoint}; continue with --resume auto")
        if terminated:
            from llmkit.errors import EXIT_TERMINATED

            raise typer.Exit(EXIT_TERMINATED) from None
        raise KeyboardInterrupt from None
    if not main:
        raise typer.Exit(0)
    for warning in result.warnings:
        report.warn(warning)
    return result
