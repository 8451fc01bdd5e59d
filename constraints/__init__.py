"""Vendor constraints per board (``<board>.xdc``), copied next to the generated kernel by
``recfabric build``. ``@PERIOD_NS@`` is replaced by the configuration's clock period."""
