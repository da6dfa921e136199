"""Analysis tools behind the `dsop-benchmark`, `dsop-complexity`, `dsop-gradients` and `dsop-plot`
commands: throughput, parameters and MACs, where each head's gradient goes, curves and tables.
May import every other subpackage.
"""
