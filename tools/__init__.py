"""Developer tools (benchmarks, the fuzz harness, memory and figure scripts), each run as
`python tools/NAME.py`. A package only so that tests import a tool's functions the ordinary
way, `from tools import plot_history` (setup.cfg puts the repository root on pytest's path).
"""
