"""The one check of a command's value, for the Python API and every command's flags alike.

    check_value("-b", 0, int, Check(low=0, low_open=True))
    -> ValueError: -b must be positive, got 0

A value must have its field's type (an int is an integer, never a float or a bool; a float is any real
number), a float must be finite (NaN and ±inf are refused: no flag documents them), and it must lie in
its Check's range and among its choices. None passes for an optional value (a field whose default is
None). The message is one line that names the flag, so the commands print it as it is.
"""
import math
import os
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """A value's range: low <= value (low < value with low_open), value <= high (value < high with
    high_open); None: no bound."""
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False

    def describe(self):
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            if self.low == 0 and self.low_open:
                return "positive"
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        return f"< {self.high:g}" if self.high_open else f"<= {self.high:g}"

    def holds(self, value):
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def flag_of(flags):
    """The name a message uses for a flag: its short form when it has one (-b), else the long one."""
    return flags[0]


def check_value(flag, value, kind=None, check=None, choices=None, optional=True):
    """Raise ValueError("FLAG must be ..., got VALUE") unless `value` is a `kind` (int, float, str or
    bool), finite when a float, within `check` and among `choices`. None passes when `optional`."""
    if value is None:
        if optional:
            return
        raise ValueError(f"{flag} must be one of {', '.join(map(str, choices))}, got None" if choices is not None
                         else f"{flag} must be given")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{flag} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{flag} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value}")
    elif kind is str and not isinstance(value, str):
        raise ValueError(f"{flag} must be a string, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if check is not None and not check.holds(value):
        raise ValueError(f"{flag} must be {check.describe()}, got {value}")


def check_path(flag, path):
    """`path` as a str (a pathlib path too), or ValueError("FLAG must be given" / "... a string" / "...
    a path, got ''")."""
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    check_value(flag, path, str, optional=False)
    if not path:
        raise ValueError(f"{flag} must be a path, got ''")
    return path


POSITIVE = Check(low=0, low_open=True)
NONNEG = Check(low=0)
