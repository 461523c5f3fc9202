"""The gradient path analysis tool (paper sections 3-4): `analysis` walks the autograd graph,
`report` prints and plots it; `python -m models.gradpath` is its command."""
