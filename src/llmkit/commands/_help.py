"""`--help` for every command: click's plain formatter with one section per panel of options (the config blocks'
panels), styled on a terminal and plain when piped (click strips the styles).

Typer's rich panels cost `import typer.rich_utils` and a rich table layout per panel, which doubled the start-up of
`llmkit sft --help`; start-up is what every --help pays.
"""

import typer
from typer.core import TyperCommand, TyperGroup

OPTION_COLUMN = 34   # the widest option column before the help text moves to the next line


def heading(title: str) -> str:
    return typer.style(title, bold=True, underline=True)


def write_rows(formatter, title: str, rows: list[tuple[str, str]], width: int = 0) -> None:
    """A section of (term, text) rows; terms padded to `width` so that sections line up with each other."""
    with formatter.section(heading(title)):
        formatter.write_dl([(typer.style(term.ljust(width), fg="cyan", bold=True), text) for term, text in rows],
                           col_max=OPTION_COLUMN)


def write_sections(command, ctx, formatter) -> None:
    """Arguments, then the options grouped by their help panel, in the order they are declared; options without a
    panel (--preset, --config, --json, --help, ...) are "Options"."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        title = "Arguments" if param.param_type_name == "argument" else (
            getattr(param, "rich_help_panel", None) or "Options")
        sections.setdefault(title, []).append(record)
    width = min(OPTION_COLUMN, max((len(term) for rows in sections.values() for term, _ in rows), default=0))
    for title, rows in sections.items():
        write_rows(formatter, title, rows, width)


def write_epilog(epilog: str | None, formatter) -> None:
    """An "Examples:" epilog keeps each command line whole (copy-pasteable); other epilogs are re-wrapped."""
    if not epilog:
        return
    first, _, rest = epilog.partition("\n")
    if first != "Examples:":
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(epilog)
        return
    formatter.write_paragraph()
    formatter.write_heading(heading("Examples"))
    for line in rest.strip("\n").splitlines():
        formatter.write(f"{line}\n")


class SectionedHelp:
    """The help layout of llmkit's commands and groups (mixed into Typer's classes)."""

    def format_help(self, ctx, formatter) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_options(ctx, formatter)
        write_epilog(self.epilog, formatter)

    def format_options(self, ctx, formatter) -> None:
        write_sections(self, ctx, formatter)
        if isinstance(self, TyperGroup):
            names = self.list_commands(ctx)
            limit = formatter.width - 6 - max(map(len, names))
            rows = [(name, self.get_command(ctx, name).get_short_help_str(limit)) for name in names]
            write_rows(formatter, "Commands", rows)


class Command(SectionedHelp, TyperCommand):
    pass


class Group(SectionedHelp, TyperGroup):
    pass


def use_sectioned_help(app: typer.Typer) -> typer.Typer:
    """Give `app`'s commands and groups (before typer builds them) llmkit's help; returns the app."""
    app.rich_markup_mode = None
    if not isinstance(app.info.cls, type) or app.info.cls is TyperGroup:   # not given: a placeholder, or typer's
        app.info.cls = Group
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = Command
    for group in app.registered_groups:
        use_sectioned_help(group.typer_instance)
    return app
