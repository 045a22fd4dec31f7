"""The parts of ``tools/benchmark.py``, one concept per module.

* ``pairs``: the (teacher, student) pairs and their loss sets (configs, input sizes);
* ``inputs``: the random mapper-style inputs of a pair;
* ``measure``: the interleaved KD step / student step / teacher forward of one (pair, loss set),
  each in a fresh process (``run_isolated``);
* ``kernels``: the relation-KL and line-max kernels alone;
* ``report``: the machine record, the ``.json`` / ``.md`` report;
* ``merge``: one report from runs split over processes.

Peak memory, device synchronisation and FLOP counting are the library's
(``bcd.utils.analysis``), shared with ``tools/analyze_model.py`` and ``kd_report``; configs are
loaded by ``tools/_tool_common.load_config`` as in the other tools.
"""
