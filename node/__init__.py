"""DICOM routing node: receive, complete, classify, route by YAML rules, forward, audit."""

__version__ = "0.1.0"

# The console script's name (pyproject.toml [project.scripts]); `python -m node` is the same command.
# Not `node`: that is Node.js's command on most machines.
COMMAND = "dicom-node"
