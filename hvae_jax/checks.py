"""Argument checks shared by the CLIs and the Python API: one line naming the argument, the
value and what is allowed, raised before any work starts."""
from __future__ import annotations

import numbers
import os
from typing import Any


def positive_int(name: str, value: Any) -> int:
  """`value` as an int >= 1, else ValueError naming `name`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{name}={value!r} is not allowed: give an integer >= 1.")
  return int(value)


def non_negative_int(name: str, value: Any) -> int:
  """`value` as an int >= 0, else ValueError naming `name`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
    raise ValueError(f"{name}={value!r} is not allowed: give an integer >= 0.")
  return int(value)


def example_count(name: str, value: Any) -> int:
  """A number of examples: an int >= 1, or -1 for all of them."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or not (value == -1 or value >= 1)):
    raise ValueError(f"{name}={value!r} is not allowed: give a number of examples >= 1, or -1 "
                     f"for all of them.")
  return int(value)


def writable_path(name: str, path: str, folder: bool) -> str:
  """`path` if a folder (`folder`, made with its parents later) or a file can be written there:
  it is not the other kind, and its nearest existing folder (for a file: its own folder, which
  must exist) is writable; else ValueError naming `name`. Nothing is created."""
  wrong = os.path.isfile(path) if folder else os.path.isdir(path)
  parent = os.path.abspath(path) if folder else os.path.dirname(os.path.abspath(path))
  while folder and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if wrong or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    why = (f"it is a {'file' if folder else 'folder'}" if wrong else f"{parent} is not a "
           f"writable folder")
    raise ValueError(f"{name}={path}: cannot write a {'folder' if folder else 'file'} there "
                     f"({why}); pass a path in a writable folder.")
  return path
