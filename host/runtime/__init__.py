"""The runtime: the driver (:mod:`.accelerator`) over one device seam (:mod:`.device`), the
request/result wire format (:mod:`.wire_format`) and the ``reference`` (:mod:`.reference`) and
``xrt`` (:mod:`.xrt`) back-ends. Nothing here imports Amaranth; the ``sim`` back-end
(:mod:`recfabric.sim.sim_device`) plugs into the device seam from outside."""
