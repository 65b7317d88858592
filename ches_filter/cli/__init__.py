"""The `ches` command: a thin layer over the library (parse, call, render, exit)."""
