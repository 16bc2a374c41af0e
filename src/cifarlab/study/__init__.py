"""Studies: lists of configs -> run folders -> tables, blocks and reports.

runs.py trains a config or reuses its finished folder; seeds.py is `train --seeds`, compare.py
`cifarlab compare`, ablate.py `cifarlab ablate`, reproduce.py `cifarlab reproduce`.
"""
