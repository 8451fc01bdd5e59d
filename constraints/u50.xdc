# RecFabric kernel constraints for the Alveo U50 (out-of-context synthesis and implementation).
# In a v++ link the platform drives ap_clk; the frequency requested there comes from
# connectivity.cfg ([clock] freqHz). This file gives Vivado the same target when the kernel is
# synthesised on its own (synth_design -mode out_of_context), for resource and timing estimates.
create_clock -name ap_clk -period @PERIOD_NS@ [get_ports ap_clk]
# ap_rst_n is synchronous to ap_clk inside the kernel and comes from a register in the platform.
set_input_delay -clock ap_clk 0.000 [get_ports ap_rst_n]
