"""`python -m condlora ...` (also what torchrun and accelerate launch run)."""

from .cli import main

raise SystemExit(main())
