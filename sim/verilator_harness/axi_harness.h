// RecFabric Verilator harness: AXI memory models, an AXI4-Lite master and a C ABI for ctypes.
//
// The harness is independent of the kernel's configuration. A small generated file
// (kernel_ports.cpp, written by recfabric.sim.verilator_device next to the Verilated model)
// binds the model's ports to the Sig handles below and says which AXI port is which; this
// file and axi_harness.cpp implement everything else:
//
//   SparseMemory  one 64-bit byte-addressed space of lazily allocated pages (4 KiB .. 1 MiB);
//                 untouched pages read as zero and cost nothing, so GB-scale table images
//                 cost only the pages actually written.
//   ReadSlave     AXI4 AR/R slave: per-port read latency, up to max_outstanding bursts in
//                 flight (in order), seeded random ARREADY/RVALID pauses, injectable
//                 SLVERR/DECERR bursts, protocol checks on the master's AR channel.
//   WriteSlave    AXI4 AW/W/B slave: the same, with write strobes and WLAST checks.
//   LiteMaster    AXI4-Lite master for s_axi_control (register reads and writes), with checks
//                 on the slave's responses.
//
// A protocol violation stops the simulation: every entry point then returns an error code and
// rf_error() gives the message (port, cycle, rule, values).
#pragma once

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace rf {

// A handle on one Verilated port: Verilator stores 1..8 bit ports as uint8_t, ..16 as
// uint16_t, ..32 as uint32_t, ..64 as uint64_t and wider ones as arrays of uint32_t words,
// least significant word first (so, on a little-endian host, byte i of the array is bits
// 8i+7..8i: AXI byte order).
struct Sig {
    void* p = nullptr;
    int bits = 0;

    bool bound() const { return p != nullptr; }
    uint64_t get() const {
        if (!p) return 0;
        if (bits <= 8) return *static_cast<uint8_t*>(p);
        if (bits <= 16) return *static_cast<uint16_t*>(p);
        if (bits <= 32) return *static_cast<uint32_t*>(p);
        if (bits <= 64) return *static_cast<uint64_t*>(p);
        const uint32_t* w = static_cast<uint32_t*>(p);
        return w[0] | (uint64_t(w[1]) << 32);
    }
    void set(uint64_t v) {
        if (!p) return;
        if (bits < 64) v &= (uint64_t(1) << bits) - 1;
        if (bits <= 8) *static_cast<uint8_t*>(p) = uint8_t(v);
        else if (bits <= 16) *static_cast<uint16_t*>(p) = uint16_t(v);
        else if (bits <= 32) *static_cast<uint32_t*>(p) = uint32_t(v);
        else if (bits <= 64) *static_cast<uint64_t*>(p) = v;
        else {
            uint32_t* w = static_cast<uint32_t*>(p);
            std::memset(w, 0, size_t((bits + 31) / 32) * 4);
            w[0] = uint32_t(v);
            w[1] = uint32_t(v >> 32);
        }
    }
    // Bytes of a data port (nbytes = bits / 8).
    void get_bytes(uint8_t* out, int nbytes) const {
        if (bits > 64) { std::memcpy(out, p, size_t(nbytes)); return; }
        uint64_t v = get();
        std::memcpy(out, &v, size_t(nbytes));
    }
    void set_bytes(const uint8_t* in, int nbytes) {
        if (bits > 64) { std::memcpy(p, in, size_t(nbytes)); return; }
        uint64_t v = 0;
        std::memcpy(&v, in, size_t(nbytes));
        set(v);
    }
};

template <class T> Sig sig(T& x, int bits) { return Sig{static_cast<void*>(&x), bits}; }
inline Sig sig_words(uint32_t* words, int bits) { return Sig{static_cast<void*>(words), bits}; }

// splitmix64: small, fast, seedable; one per channel so that the pause pattern of one port
// does not depend on the traffic of another.
struct Rng {
    uint64_t s = 0x9E3779B97F4A7C15ull;
    void seed(uint64_t v) { s = v * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull; }
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
    bool chance(double p) { return p > 0.0 && uniform() < p; }
};

class SparseMemory {
public:
    explicit SparseMemory(int page_bits) : page_bits_(page_bits) {}
    void read(uint64_t addr, uint8_t* out, uint64_t n);
    void write(uint64_t addr, const uint8_t* in, uint64_t n, const uint8_t* strobe_bits = nullptr);
    uint64_t pages() const { return pages_.size(); }
    uint64_t page_bytes() const { return uint64_t(1) << page_bits_; }

private:
    uint8_t* find(uint64_t page);
    uint8_t* touch(uint64_t page);
    int page_bits_;
    std::unordered_map<uint64_t, std::unique_ptr<uint8_t[]>> pages_;
    uint64_t last_page_ = ~uint64_t(0);
    uint8_t* last_ptr_ = nullptr;
};

struct Harness;

// Settings common to every memory port (set from Python through rf_port_config).
struct PortConfig {
    uint32_t latency = 16;          // cycles from the address handshake to the first R beat / B
    uint32_t max_outstanding = 64;  // bursts accepted and not yet answered
    double p_stall = 0.0;           // per cycle and channel: drop READY / hold back VALID
    double p_error = 0.0;           // per burst: answer SLVERR or DECERR (half each)
};

// Counters per port, read through rf_port_stats (in this order).
struct PortStats {
    uint64_t bursts = 0, beats = 0, errors_injected = 0, max_inflight = 0, addr_wait_cycles = 0;
};

struct AxiAddr {  // one AR or AW channel's payload
    Sig id, addr, len, size, burst, valid, ready;
};

struct ReadPorts {
    AxiAddr ar;
    Sig rid, rdata, rresp, rlast, rvalid, rready;
};

struct WritePorts {
    AxiAddr aw;
    Sig wdata, wstrb, wlast, wvalid, wready;
    Sig bid, bresp, bvalid, bready;
};

struct LitePorts {
    Sig awaddr, awvalid, awready, wdata, wstrb, wvalid, wready, bresp, bvalid, bready;
    Sig araddr, arvalid, arready, rdata, rresp, rvalid, rready;
};

struct Burst {
    uint64_t addr = 0;  // start address
    uint32_t beats = 1, beat = 0, size = 0, kind = 1, id = 0;
    uint64_t due = 0;   // first cycle a response may be offered
    uint32_t resp = 0;
};

// Remembers an address channel's payload while VALID waits for READY (it must not change).
struct AddrCheck {
    bool waiting = false;
    uint64_t id = 0, addr = 0, len = 0, size = 0, burst = 0;
};

class Port {
public:
    Port(Harness* h, std::string name, int data_bits) : h_(h), name_(std::move(name)),
        bytes_(data_bits / 8) {}
    virtual ~Port() = default;
    virtual void drive() = 0;   // set the slave's outputs for this cycle
    virtual void sample() = 0;  // read the master's outputs (after combinational settle)
    virtual void commit() = 0;  // apply this cycle's handshakes
    virtual void clear() = 0;   // drop everything in flight (reset)
    virtual void drive_idle() = 0;
    virtual void check_reset() = 0;  // masters keep VALIDs low in reset
    const std::string& name() const { return name_; }
    PortConfig cfg;
    PortStats stats;
    Rng rng_a, rng_d, rng_r;

protected:
    bool check_addr(const AxiAddr& a, AddrCheck& c, bool fired, const char* ch);
    bool check_burst(const Burst& b, const char* ch);
    Burst make_burst(const AxiAddr& a);
    Harness* h_;
    std::string name_;
    int bytes_;
};

class ReadSlave : public Port {
public:
    ReadSlave(Harness* h, std::string name, int data_bits, ReadPorts p)
        : Port(h, std::move(name), data_bits), p_(p), data_(size_t(bytes_)) {}
    void drive() override;
    void sample() override;
    void commit() override;
    void clear() override { q_.clear(); chk_ = AddrCheck{}; }
    void drive_idle() override;
    void check_reset() override;

private:
    ReadPorts p_;
    std::deque<Burst> q_;
    AddrCheck chk_;
    bool ar_ready_ = false, r_valid_ = false, ar_fire_ = false, r_fire_ = false;
    Burst ar_;  // the AR payload of this cycle's handshake (sampled before the clock edge)
    std::vector<uint8_t> data_;
};

class WriteSlave : public Port {
public:
    WriteSlave(Harness* h, std::string name, int data_bits, WritePorts p)
        : Port(h, std::move(name), data_bits), p_(p), data_(size_t(bytes_)),
          strb_(size_t(bytes_)) {}
    void drive() override;
    void sample() override;
    void commit() override;
    void clear() override { aw_.clear(); b_.clear(); chk_ = AddrCheck{}; w_waiting_ = false; }
    void drive_idle() override;
    void check_reset() override;

private:
    WritePorts p_;
    std::deque<Burst> aw_;  // accepted AWs whose data is not complete
    std::deque<Burst> b_;   // responses to send
    AddrCheck chk_;
    bool aw_ready_ = false, w_ready_ = false, b_valid_ = false;
    bool aw_fire_ = false, w_fire_ = false, b_fire_ = false;
    bool w_waiting_ = false;
    Burst awp_;          // this cycle's AW payload, sampled before the clock edge
    bool w_last_ = false;  // this cycle's WLAST and (in data_, strb_) WDATA/WSTRB
    uint64_t w_strb_ = 0;
    std::vector<uint8_t> w_prev_;
    uint64_t w_prev_last_ = 0;
    std::vector<uint8_t> data_, strb_;
};

// The top-level model, implemented by the generated kernel_ports.cpp.
struct Top {
    virtual ~Top() = default;
    virtual void eval() = 0;
    virtual void trace_open(const char* path) = 0;
    virtual void trace_dump(uint64_t time) = 0;
    virtual void trace_close() = 0;
    virtual bool can_trace() const = 0;
    Sig clk, rst_n;
    // Registers between the harness's reset and the kernel's (the generated top may register
    // ap_rst_n): the kernel takes its reset values this many cycles after the first reset edge.
    int reset_flops = 0;
};

struct Harness {
    explicit Harness(int page_bits) : mem(page_bits) {}
    std::unique_ptr<Top> top;
    std::vector<std::unique_ptr<Port>> ports;
    LitePorts lite;
    SparseMemory mem;
    uint64_t cycle = 0;
    bool in_reset = false;
    uint64_t reset_cycles = 0;
    // Cycles after ap_rst_n rises in which the harness still keeps every channel idle: the
    // kernel leaves reset top->reset_flops cycles later (a slave in reset may show READY).
    uint64_t release_cycles = 0;
    std::string error;  // first protocol violation; non-empty stops the simulation
    bool tracing = false;
    // Wall and CPU (this thread) seconds spent inside the C ABI calls that simulate cycles
    // (rf_reset, rf_step, rf_reg_read/write, rf_run_until_done): with `cycle`, the
    // simulation's own speed, whatever the caller does between calls.
    double sim_wall_s = 0.0, sim_cpu_s = 0.0;

    void fail(const std::string& msg) { if (error.empty()) error = msg; }
    bool failed() const { return !error.empty(); }
    // One clock cycle: drive, settle, sample, rising edge, commit. Lite master state is
    // driven by the functions below through these flags.
    void step();
    // AXI4-Lite master state for the current transaction.
    bool l_aw = false, l_w = false, l_b = false, l_ar = false, l_r = false;
    uint64_t l_addr = 0, l_wdata = 0, l_rdata = 0, l_resp = 0;
    bool l_aw_fire = false, l_w_fire = false, l_b_fire = false, l_ar_fire = false,
         l_r_fire = false;
};

// Provided by the generated kernel_ports.cpp.
Top* make_top(Harness& h);

}  // namespace rf
