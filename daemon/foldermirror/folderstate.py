"""What the service knows of each served folder: plain data shared by its parts.

Admission creates and removes the entries; catch-up tracking (catchup/tracking.py), result
recording (pipeline/results.py), WatchHealth and the read model read and update them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from foldermirror.config import FolderConfig
from foldermirror.paths import Excluder
from foldermirror.pipeline.folder_stats import Tally
from foldermirror.pipeline.records import RootId
from foldermirror.pipeline.target_health import TargetHealth

if TYPE_CHECKING:
    from foldermirror.catchup.compare import WalkStats


@dataclass
class CatchUp:
    """A comparison of a folder with its target, from its request until its differences are mirrored."""

    reason: str
    started: float
    start: Tally          # the folder's counts when it began: what it did is the difference
    walk_done: bool = False
    differences: int = 0
    to_copy: int = 0      # of those, files and symlinks (what `files_mirrored` counts up to)
    compared: bool = False  # its last comparison of the whole folder ran to the end (no error, link not lost)
    bytes_to_copy: int = 0  # the size of those files
    entries: int = 0      # source entries compared by the finished whole-folder walks
    walk: WalkStats | None = None  # the whole-folder walk under way: its counts so far, read by sync's bar


@dataclass
class FolderState:
    config: FolderConfig
    excluder: Excluder
    target: TargetHealth  # the mirror as a whole: writable, which directory stands there
    catch_up: CatchUp | None = None
    missing: bool = False
    root_id: RootId | None = None  # the source root being watched: (st_dev, st_ino)
    target_id: RootId | None = None  # the target root as made or found at admission
    target_lost: bool = False               # reported gone; it could not be made again yet
    suspect: bool = False                 # a worker found the root gone or replaced
    rewatch_at: float = 0.0               # rebuild the watches then (0: no need)
    rewatch_paths: int = 0                # suspect directory events since the last rebuild
