"""Entry point: ``python -m smesh.bench.candidates MODEL --role ... --listen ... ...``."""

import importlib
import sys

from smesh.bench.candidates.common import parse

model, options = parse(sys.argv[1:])
importlib.import_module(f"smesh.bench.candidates.{model}").main(options)
