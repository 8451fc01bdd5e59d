"""Reference computations: the float model and the one bit-exact integer golden model
(:mod:`.golden`, pooling source injected) and the quantizer with its accuracy report
(:mod:`.quantize`)."""
