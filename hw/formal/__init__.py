"""Formal AXI protocol proofs of RecFabric's AXI blocks (SymbiYosys, run from Python).

* :mod:`.axi_properties`: AXI4 read/write and AXI4-Lite protocol checkers (``Assert`` the block's
  side, ``Assume`` the environment's);
* :mod:`.harness`: each block with an AXI port, its checker, its documented environment and
  block-level properties, and deliberate bugs (mutations) that the properties must catch;
* :mod:`.sby`: RTLIL, ``.sby`` file, ``yowasp-sby``, parsed result;
* ``python -m recfabric.hw.formal`` (``make formal``): run them from the command line.
"""
