"""``log --graph``: history drawn in lanes, line for line as ``git log --graph`` draws it.

:func:`draw` lays commits out the way git's ``graph.c`` does: a lane (two
characters) per line of descent, ``*`` on the commit's lane, ``|`` on the
others; a merge opens its parents' lanes with ``\\`` (``-.`` for more than
two parents), and lanes that meet again close with ``/`` (``_`` when they
cross others). :func:`topo_order` orders commits as ``--graph`` does (no
commit before its children; a side line of history kept together), and
:func:`shown_parents` joins a commit to its nearest shown ancestors when a
filter hides the commits between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import Enum


class _State(Enum):
    PADDING = "padding"
    PRE_COMMIT = "pre-commit"
    COMMIT = "commit"
    POST_MERGE = "post-merge"
    COLLAPSING = "collapsing"


def topo_order(parents: Mapping[str, Sequence[str]]) -> list[str]:
    """``parents``' commits (newest first) reordered so that none comes before
    its children and each line of history stays together: the order
    ``git log --graph`` (``--topo-order``) shows."""
    waiting = dict.fromkeys(parents, 1)  # 1 + the children not yet shown
    for commit in parents:
        for parent in parents[commit]:
            if parent in waiting:
                waiting[parent] += 1
    ready = [c for c in parents if waiting[c] == 1][::-1]  # popped newest first
    order = []
    while ready:
        commit = ready.pop()
        for parent in parents[commit]:
            if waiting.get(parent, 0) > 1:
                waiting[parent] -= 1
                if waiting[parent] == 1:
                    ready.append(parent)
        waiting[commit] = 0
        order.append(commit)
    return order


def shown_parents(
    parents: Mapping[str, Sequence[str]], shown: Iterable[str]
) -> dict[str, list[str]]:
    """Each shown commit's nearest shown ancestors through the hidden ones,
    first parent first (how git joins lines when a filter leaves commits out)."""
    visible = set(shown)
    nearest: dict[str, list[str]] = {}  # a hidden commit -> its nearest shown ancestors

    def through(commit: str) -> list[str]:
        return nearest.get(commit, [commit])

    for commit in reversed(topo_order(parents)):  # parents before their children
        if commit not in visible:
            found = (a for p in parents[commit] for a in through(p))
            nearest[commit] = list(dict.fromkeys(found))
    return {
        c: list(dict.fromkeys(a for p in parents.get(c, ()) for a in through(p))) for c in visible
    }


def draw(
    commits: Iterable[tuple[str, Sequence[str], Sequence[str]]], separated: bool = False
) -> list[str]:
    """The lines of ``(commit, parents, text lines)`` (children before parents),
    each text line behind the graph: the first on the commit's ``*``, the rest
    on the lines that follow it, as ``git log --graph`` prints them; with
    ``separated``, a line of lanes between commits (git's blank line)."""
    graph = _Graph()
    out: list[str] = []
    for commit, parents, text in commits:
        graph.update(commit, list(dict.fromkeys(parents)))
        if separated and out:
            out.append(graph.separator_line())
        while graph.state is _State.PRE_COMMIT:
            out.append(graph.next_line())
        out.append(graph.next_line() + (text[0] if text else ""))
        for line in text[1:]:
            out.append(graph.next_line() + line)
        while graph.state is not _State.PADDING:
            out.append(graph.next_line())
    return [line.rstrip() for line in out]


class _Graph:
    """git's graph state machine: the lanes before and after the current
    commit, and where each screen column of a line goes on the next."""

    def __init__(self) -> None:
        self.commit = ""
        self.parents: list[str] = []
        self.columns: list[str] = []  # the commit each lane waits for, before this commit
        self.new_columns: list[str] = []  # ... and after it
        self.mapping: list[int] = []  # screen column -> the lane it moves to (-1: empty)
        self.old_mapping: list[int] = []
        self.width = 0
        self.state = self.prev_state = _State.PADDING
        self.commit_index = self.prev_commit_index = 0
        self.merge_layout = 0  # 0: the first parent's lane is left of the merge; 1: not
        self.edges_added = self.prev_edges_added = 0
        self.expansion_row = 0

    def update(self, commit: str, parents: list[str]) -> None:
        """Start on ``commit``: lay out the lanes its parents take."""
        self.commit, self.parents = commit, parents
        self.prev_commit_index = self.commit_index
        self.columns, self.new_columns = self.new_columns, []
        self.mapping = [-1] * (2 * (len(self.columns) + len(parents)))
        self.width = 0
        self.prev_edges_added, self.edges_added = self.edges_added, 0
        for i, lane in enumerate(self._lanes()):
            if lane != commit:
                self._insert(lane, -1)
                continue
            self.commit_index, self.merge_layout = i, -1
            for parent in parents:
                self._insert(parent, i)
            if not parents:
                self.width += 2
        while len(self.mapping) > 1 and self.mapping[-1] < 0:
            self.mapping.pop()
        self.expansion_row = 0
        self.state = _State.PRE_COMMIT if self._needs_pre_commit_line() else _State.COMMIT

    def next_line(self) -> str:
        """The next line of the graph, padded to its width."""
        draw = {
            _State.PADDING: self._padding_line,
            _State.PRE_COMMIT: self._pre_commit_line,
            _State.COMMIT: self._commit_line,
            _State.POST_MERGE: self._post_merge_line,
            _State.COLLAPSING: self._collapsing_line,
        }[self.state]
        return draw().ljust(self.width)

    def separator_line(self) -> str:
        """The lanes going into the commit about to be drawn, without moving
        them: the line git draws between two commits' texts."""
        if self.state is not _State.COMMIT:
            return self.next_line()
        widths = {self.commit: 2 * len(self.parents) - 4} if len(self.parents) > 2 else {}
        line = "".join("|" + " " * widths.get(lane, 1) for lane in self.columns)
        self.prev_state = _State.PADDING
        return line.ljust(self.width)

    # -- layout ------------------------------------------------------------------

    def _lanes(self) -> list[str]:
        """The lanes of this commit's lines: its own is new when no child led to it."""
        return self.columns if self.commit in self.columns else [*self.columns, self.commit]

    def _insert(self, commit: str, index: int) -> None:
        """Give ``commit`` a lane after this commit (``index``: the lane of the
        commit whose parent it is; -1 for a lane passing by)."""
        if commit in self.new_columns:
            lane = self.new_columns.index(commit)
        else:
            lane = len(self.new_columns)
            self.new_columns.append(commit)
        if len(self.parents) > 1 and index > -1 and self.merge_layout == -1:
            distance = index - lane  # the first parent of a merge picks the layout
            shift = 2 * distance - 3 if distance > 1 else 1
            self.merge_layout = 0 if distance > 0 else 1
            self.edges_added = len(self.parents) + self.merge_layout - 2
            at = self.width + (self.merge_layout - 1) * shift
            self.width += 2 * self.merge_layout
        elif self.edges_added > 0 and lane == self.mapping[self.width - 2]:
            at = self.width - 2  # a merge's edge joins the lane beside it at once
            self.edges_added = -1
        else:
            at = self.width
            self.width += 2
        self.mapping[at] = lane

    def _dashed_parents(self) -> int:
        return len(self.parents) + self.merge_layout - 3

    def _needs_pre_commit_line(self) -> bool:
        """An octopus merge with lanes to its right first moves them out of the way."""
        return (
            len(self.parents) >= 3
            and self.commit_index < len(self.columns) - 1
            and self.expansion_row < 2 * self._dashed_parents()
        )

    def _mapping_done(self) -> bool:
        return all(t < 0 or t == i // 2 for i, t in enumerate(self.mapping))

    def _settle(self) -> None:
        self._go(_State.PADDING if self._mapping_done() else _State.COLLAPSING)

    def _go(self, state: _State) -> None:
        self.prev_state, self.state = self.state, state

    # -- lines ---------------------------------------------------------------------

    def _padding_line(self) -> str:
        return "| " * len(self.new_columns)

    def _pre_commit_line(self) -> str:
        line, seen = "", False
        for i, lane in enumerate(self.columns):
            if lane == self.commit:
                seen = True
                line += "|" + " " * self.expansion_row
            elif seen and self.expansion_row == 0:
                after_merge = self.prev_state is _State.POST_MERGE and self.prev_commit_index < i
                line += "\\" if after_merge else "|"
            else:
                line += "\\" if seen else "|"
            line += " "
        self.expansion_row += 1
        if not self._needs_pre_commit_line():
            self._go(_State.COMMIT)
        return line

    def _commit_line(self) -> str:
        line, seen = "", False
        for i, lane in enumerate(self._lanes()):
            if lane == self.commit:
                seen = True
                dashes = self._dashed_parents() if len(self.parents) > 2 else 0
                line += "*" + ("-" * (2 * dashes - 1) + "." if dashes > 0 else "")
            elif seen and self.edges_added > 1:
                line += "\\"
            elif seen and self.edges_added == 1:
                after_merge = (
                    self.prev_state is _State.POST_MERGE
                    and self.prev_edges_added > 0
                    and self.prev_commit_index < i
                )
                line += "\\" if after_merge else "|"
            elif (
                self.prev_state is _State.COLLAPSING
                and _at(self.old_mapping, 2 * i + 1) == i
                and _at(self.mapping, 2 * i) < i
            ):
                line += "/"
            else:
                line += "|"
            line += " "
        if len(self.parents) > 1:
            self._go(_State.POST_MERGE)
        else:
            self._settle()
        return line

    def _post_merge_line(self) -> str:
        line, seen, first_parent_passed = "", False, False
        for i, lane in enumerate(self._lanes()):
            if lane == self.commit:
                seen = True
                kind = self.merge_layout
                for j in range(len(self.parents)):
                    line += "/|\\"[kind]
                    if kind < 2:
                        kind += 1
                    elif self.edges_added > 0 or j < len(self.parents) - 1:
                        line += " "
                if self.edges_added == 0:
                    line += " "
            elif seen:
                line += "\\ " if self.edges_added > 0 else "| "
            else:
                line += "|"
                if self.merge_layout != 0 or i != self.commit_index - 1:
                    line += "_" if first_parent_passed else " "
            first_parent_passed = first_parent_passed or lane == self.parents[0]
        self._settle()
        return line

    def _collapsing_line(self) -> str:
        """Move each lane one step left towards its place (lanes only ever move left)."""
        old, new = self.mapping, [-1] * len(self.mapping)
        edge = edge_target = -1  # the one lane allowed to move horizontally
        for i, target in enumerate(old):
            if target < 0:
                continue
            if 2 * target == i:
                new[i] = target
                continue
            if new[i - 1] < 0:
                new[i - 1] = target
                moved = i
            elif new[i - 1] == target:
                continue  # it joins the lane to its left: both go to one parent
            else:
                new[i - 2] = target  # it crosses the lane to its left
                moved = i - 1
            if edge == -1:
                edge, edge_target = moved, target
                for j in range(2 * target + 3, i - 2, 2):
                    new[j] = target
        self.old_mapping = list(new)
        if new[-1] < 0:
            new.pop()
        line, used_horizontal = "", False
        for i, target in enumerate(new):
            if target < 0:
                line += " "
            elif 2 * target == i:
                line += "|"
            elif target == edge_target and i != edge - 1:
                if i != 2 * target + 3:
                    new[i] = -1
                used_horizontal = True
                line += "_"
            else:
                if used_horizontal and i < edge:
                    new[i] = -1
                line += "/"
        self.mapping = new
        if self._mapping_done():
            self._go(_State.PADDING)
        return line


def _at(values: Sequence[int], index: int) -> int:
    return values[index] if 0 <= index < len(values) else -1
