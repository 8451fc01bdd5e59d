"""Board definitions: Alveo data-centre cards (Vitis targets) and ECP5 boards for timing."""
