"""The runs screen: every run in the runs directory, sortable and filterable.

A thread worker rescans every 2 s. Each run keeps its own ``RunReader`` (a tailer and its
``RunState``), so a rescan reads only what was appended since the last one (a run with 100,000
events is read once), and the UI thread only receives finished rows (``ild_tui.runs.RunRow``, the
same summary ``ild ls`` prints).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from engine.runlog.layout import RunDir, list_runs
from engine.runlog.reader import RunReader

from ..messages import RunsScanned
from ..runs import SKIPPED_NOTE, RunRow, summarise_state
from ..widgets.header import STATUS_LOOK, fmt_clock, fmt_duration, theme_color

SORTS = ("started", "name", "status", "model", "strategy", "layers", "last", "best", "duration")
COLUMNS = (
    ("", "mark"),
    ("status", "status"),
    ("run", "name"),
    ("model", "model"),
    ("strategy", "strategy"),
    ("layers", "layers"),
    ("teacher", "teacher"),
    ("last", "last"),
    ("best", "best"),
    ("started", "started"),
    ("duration", "duration"),
)
WIDE_ONLY = {"model", "teacher", "best", "started", "duration"}  # shown from 120 columns


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "open", show=False),
        Binding("o", "open", "open"),
        Binding("space", "mark", "mark"),
        Binding("c", "compare", "compare"),
        Binding("w", "report", "report"),
        # Priority: the action runs as the key arrives, so the keys typed right after `/` (already
        # queued) are routed to the box and never to the table's bindings (`d` deletes there).
        Binding("slash", "filter", "filter", priority=True),
        Binding("s", "sort", "sort"),
        Binding("S", "reverse", "reverse", show=False),
        Binding("d", "delete", "delete"),
        Binding("escape", "clear_filter", "clear filter", show=False),
    ]

    def __init__(self, runs_dir: str | Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(runs_dir)
        self.rows: list[RunRow] = []
        self.shown: list[RunRow] = []
        self.marked: list[str] = []
        self.sort_key = "started"
        self.reverse = True
        self.filter_text = ""
        self.scanned = False
        self.narrow = False
        self._cache: dict[str, RunReader] = {}
        self._scan_lock = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Static(id="runs-title")
        yield Input(placeholder="filter: words in name, model, strategy, status", id="runs-filter")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="runs-empty")
        yield Static(id="runs-detail", classes="panel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runs-filter", Input).display = False
        self.query_one("#runs-empty").display = False
        table = self.query_one("#runs-table", DataTable)
        self._columns(narrow=False)
        table.focus()
        self._title()
        self.call_after_refresh(self.rescan)
        self.set_interval(2.0, self.rescan)

    def _columns(self, narrow: bool) -> None:
        """Every column, or (narrow terminals) the ones that say which run is which and how it
        stands: nothing runs off the right edge at 80 columns; the detail box has the rest."""
        self.narrow = narrow
        table = self.query_one("#runs-table", DataTable)
        table.clear(columns=True)
        for label, key in COLUMNS:
            if not narrow or key not in WIDE_ONLY:
                table.add_column(label, key=key)

    def on_resize(self, event) -> None:
        narrow = event.size.width < 120
        self.set_class(event.size.height < 30, "-short")
        if narrow != getattr(self, "narrow", False):
            self._columns(narrow)
            if self.scanned:
                self._fill()

    def on_screen_resume(self) -> None:
        self.rescan()

    # -- scanning --------------------------------------------------------------------------------

    def rescan(self) -> None:
        """Scan in the background, only while this screen is shown (under a live screen it would
        fold every run again for nobody)."""
        if self.is_current:
            self._scan()

    @work(thread=True, group="runs-scan", exit_on_error=False)
    def _scan(self) -> None:
        if not self._scan_lock.acquire(blocking=False):
            return
        try:
            now = self.app.clock()
            liveness = self.app.liveness
            rows = []
            seen = set()
            for rd in list_runs(self.root):
                key = str(rd.path)
                seen.add(key)
                reader = self._cache.get(key) or RunReader(rd)
                reader.update()
                self._cache[key] = reader
                rows.append(summarise_state(rd.path, reader.state, liveness(rd), now))
            for key in list(self._cache):
                if key not in seen:
                    del self._cache[key]
            self.post_message(RunsScanned(rows))
        finally:
            self._scan_lock.release()

    def on_runs_scanned(self, message: RunsScanned) -> None:
        self.rows = message.rows
        self.scanned = True
        known = {r.path for r in self.rows}
        self.marked = [p for p in self.marked if p in known]
        self._fill()

    # -- table -----------------------------------------------------------------------------------

    def _title(self) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" Runs ", Style(bold=True, reverse=True))
        t.append(f"  {self.root}", Style(bold=True))
        t.append(f"   {len(self.shown)} shown of {len(self.rows)}", Style(dim=True))
        t.append(f"   sorted by {self.sort_key} {'↓' if self.reverse else '↑'}", Style(dim=True))
        if self.filter_text:
            t.append(f"   filter: {self.filter_text!r}", Style(italic=True))
        if self.marked:
            t.append(f"   {len(self.marked)} marked", Style(bold=True))
        self.query_one("#runs-title", Static).update(t)

    def _fill(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        cursor_path = self.current_path()
        rows = [r for r in self.rows if r.matches(self.filter_text)]
        rows.sort(key=lambda r: r.sort_key(self.sort_key), reverse=self.reverse)
        if self.reverse:  # keep "no value" rows last either way
            rows.sort(key=lambda r: r.sort_key(self.sort_key)[0])
        self.shown = rows
        table.clear()
        for r in rows:
            glyph, label, var = STATUS_LOOK.get(r.status, ("?", r.status, "foreground"))
            color = theme_color(self.app, var)
            mark = "✓" if r.path in self.marked else " "
            layers = "-"
            if r.start_layers:
                layers = f"{r.layers_now if r.layers_now is not None else '-'}/{r.start_layers}"
                if r.target_layers:
                    layers += f"→{r.target_layers}"
            cells = {
                "mark": Text(mark, style=Style(bold=True)),
                "status": Text(f"{glyph} {label}", style=Style(color=color)),
                "name": Text(r.shown_name, style=Style(bold=True)),
                "model": r.model,
                "strategy": r.strategy,
                "layers": Text(layers, justify="right"),
                "teacher": Text("-" if r.teacher is None else f"{r.teacher:.3f}", justify="right"),
                "last": Text("-" if r.last is None else f"{r.last:.3f}", justify="right"),
                "best": Text("-" if r.best is None else f"{r.best:.3f}", justify="right"),
                "started": fmt_clock(r.started, True),
                "duration": Text(fmt_duration(r.duration), justify="right"),
            }
            table.add_row(*[cells[key] for _, key in COLUMNS if not self.narrow or key not in WIDE_ONLY], key=r.path)
        empty = self.query_one("#runs-empty", Static)
        if not self.rows:
            empty.update(
                Text(
                    f"\n  No runs in {self.root}.\n\n  Start one with:  ild run --model smollm2-135m "
                    f"--strategy iterative-pruning --target-layers 28 --runs-dir {self.root}",
                    style=Style(italic=True),
                )
            )
        elif not rows:
            empty.update(
                Text(f"\n  No run matches {self.filter_text!r} (escape clears the filter).", style=Style(italic=True))
            )
        empty.display = not rows
        self.query_one("#runs-detail").display = bool(rows)
        if cursor_path is not None:
            for i, r in enumerate(rows):
                if r.path == cursor_path:
                    table.move_cursor(row=i, animate=False)
                    break
        self._title()
        self._detail()

    def _detail(self) -> None:
        path = self.current_path()
        box = self.query_one("#runs-detail", Static)
        row = next((r for r in self.shown if r.path == path), None)
        if row is None:
            box.update("")
            return
        box.border_title = row.shown_name
        dim = Style(dim=True)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("path ", dim)
        t.append(row.path)
        if self.narrow:  # the columns a narrow table leaves out
            t.append(f"\nmodel {row.model}   teacher {'-' if row.teacher is None else f'{row.teacher:.3f}'}", dim)
            t.append(f"   best {'-' if row.best is None else f'{row.best:.3f}'}", dim)
            t.append(f"   started {fmt_clock(row.started, True)}   duration {fmt_duration(row.duration)}", dim)
        t.append("   events ", dim)
        t.append(f"{row.events:,}")
        t.append("   mode ", dim)
        t.append(row.mode or "-")
        t.append("   last event ", dim)
        t.append(fmt_clock(row.last_event_t, True))
        t.append("\nremoved (in order) ", dim)
        t.append(" ".join(str(x) for x in row.removed) or "none yet")
        if row.teacher is not None and row.last is not None:
            t.append("   aggregate ", dim)
            t.append(
                f"{row.teacher:.3f} → {row.last:.3f} ({(row.last / row.teacher - 1) * 100:+.1f}%)"
                if row.teacher
                else ""
            )
        if row.pending:
            t.append("\n" + row.pending, Style(bold=True))
        if row.note:
            t.append("\n" + row.note, Style(italic=True))
        if row.skipped:
            t.append(f"\n{row.skipped} {SKIPPED_NOTE}", Style(italic=True))
        box.update(t)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._detail()

    def current_path(self) -> str | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.shown or table.cursor_row is None:
            return None
        row = table.cursor_row
        return self.shown[row].path if 0 <= row < len(self.shown) else None

    # -- actions ---------------------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        key = event.column_key.value
        if key in SORTS:
            if key == self.sort_key:
                self.reverse = not self.reverse
            else:
                self.sort_key = key
            self._fill()

    def action_open(self) -> None:
        path = self.current_path()
        if path:
            self.app.open_run(path)

    def action_mark(self) -> None:
        path = self.current_path()
        if not path:
            return
        if path in self.marked:
            self.marked.remove(path)
        else:
            self.marked.append(path)
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row
        self._fill()
        if row + 1 < len(self.shown):
            table.move_cursor(row=row + 1, animate=False)

    def action_compare(self) -> None:
        paths = list(self.marked)
        if not paths:
            paths = [r.path for r in self.shown]
        if len(paths) < 2:
            self.notify("mark two or more runs with space to compare them", severity="warning")
            return
        self.app.open_compare(paths)

    def action_report(self) -> None:
        paths = list(self.marked) or ([self.current_path()] if self.current_path() else [])
        if not paths:
            self.notify("no run to report on", severity="warning")
            return
        from .dialogs import ReportScreen

        names = [next((r.name for r in self.rows if r.path == p), Path(p).name) for p in paths]
        default = self.root.resolve().parent / "reports" / time.strftime("report-%Y%m%d-%H%M%S")

        def chosen(answer: tuple[str, bool] | None) -> None:
            if answer:
                where, measure = answer
                self.notify(
                    f"writing a report of {len(paths)} run{'s' if len(paths) > 1 else ''} to {where}"
                    + (" (timing the models)" if measure else "")
                )
                self._write_report(paths, Path(where).expanduser(), measure)

        self.app.push_screen(ReportScreen(names, str(default)), chosen)

    @work(thread=True, group="report", exit_on_error=False)
    def _write_report(self, paths: list[str], out: Path, measure: bool) -> None:
        # Matplotlib's object API (no pyplot) and the measuring subprocesses are safe off the UI thread.
        from ..report import ReportError, write_report

        try:
            result = write_report([Path(p) for p in paths], out, measure=measure)
        except ReportError as exc:
            self.app.call_from_thread(self.notify, f"no report: {exc}", severity="error", timeout=10)
            return
        except Exception as exc:
            self.app.call_from_thread(
                self.notify, f"report failed: {type(exc).__name__}: {exc}", severity="error", timeout=10
            )
            return
        notes = "".join(f"\n{n}" for n in result.notes[:3])
        self.app.call_from_thread(self.notify, f"report written: {result.page}{notes}", timeout=10)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # A `/` typed into the filter is text, not "open the filter".
        return not (action == "filter" and isinstance(self.focused, Input))

    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.display = True
        # Focus now, not after the next refresh (``Widget.focus`` defers): the keys typed right
        # after `/` are already queued, and each must reach the box, not the table's bindings.
        self.set_focus(box)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "runs-filter":
            self.filter_text = event.value
            self._fill()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "runs-filter":
            self.query_one("#runs-table", DataTable).focus()
            if not event.value:
                event.input.display = False

    def action_clear_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        if box.display or self.filter_text:
            box.value = ""
            box.display = False
            self.filter_text = ""
            self._fill()
            self.query_one("#runs-table", DataTable).focus()

    def action_sort(self) -> None:
        self.sort_key = SORTS[(SORTS.index(self.sort_key) + 1) % len(SORTS)]
        self._fill()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self._fill()

    def action_delete(self) -> None:
        path = self.current_path()
        if not path:
            return
        row = next(r for r in self.shown if r.path == path)
        if self.app.liveness(RunDir(path)):
            self.notify(f"{row.name} is running: stop it first (X on its live screen)", severity="error")
            return
        from ..trash import dir_size, fmt_bytes
        from .dialogs import ConfirmScreen

        dirname = Path(path).name
        days = self.app.settings.trash_days

        def done(ok: bool | None) -> None:
            if ok:
                self._delete(path, dirname)

        self.app.push_screen(
            ConfirmScreen(
                f"Move run {dirname} ({fmt_bytes(dir_size(Path(path)))}: events, checkpoints, export) to the trash?",
                detail=f"It leaves this list and stays in {self.root / '.trash'} for {days:g} days; "
                f"`ild restore {dirname}` brings it back, `ild trash --empty` frees the space now.",
                yes="move to trash",
                no="keep",
            ),
            done,
        )

    def _delete(self, path: str, name: str) -> None:
        from ..trash import TrashError, empty, move_to_trash

        try:
            move_to_trash(path, self.root, now=time.time())
        except (TrashError, OSError) as exc:
            self.notify(f"not deleted: {exc}", severity="error")
            return
        # Entries past the retention go for good now, while a delete is being done anyway.
        empty(self.root, older_than_days=self.app.settings.trash_days)
        if path in self.marked:
            self.marked.remove(path)
        self.notify(f"moved {name} to the trash (`ild restore {name}` brings it back)")
        self.rescan()
