// RecFabric Verilator harness: memory models, AXI4-Lite master, protocol checks, C ABI.
// See axi_harness.h for the structure; recfabric/sim/verilator_device.py is the Python side.
#include "axi_harness.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace rf {

namespace {

std::string hex(uint64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
    return buf;
}

bool all_zero(const uint8_t* p, uint64_t n) {
    for (uint64_t i = 0; i < n; ++i)
        if (p[i]) return false;
    return true;
}

// Address of beat n of a burst (AXI4 spec A3.4.2): FIXED repeats the address, INCR aligns
// every beat after the first to the transfer size, WRAP wraps at beats * size.
uint64_t beat_address(const Burst& b, uint32_t n) {
    uint64_t aligned = b.addr & ~uint64_t(b.size - 1);
    if (b.kind == 0) return b.addr;
    if (b.kind == 2) {
        uint64_t span = uint64_t(b.beats) * b.size;
        uint64_t lower = b.addr & ~(span - 1);
        return lower + ((aligned - lower + uint64_t(n) * b.size) % span);
    }
    return n == 0 ? b.addr : aligned + uint64_t(n) * b.size;
}

}  // namespace

// ---- SparseMemory --------------------------------------------------------------------------

uint8_t* SparseMemory::find(uint64_t page) {
    if (page == last_page_) return last_ptr_;
    auto it = pages_.find(page);
    if (it == pages_.end()) return nullptr;
    last_page_ = page;
    last_ptr_ = it->second.get();
    return last_ptr_;
}

uint8_t* SparseMemory::touch(uint64_t page) {
    uint8_t* p = find(page);
    if (p) return p;
    auto& slot = pages_[page];
    slot.reset(new uint8_t[size_t(1) << page_bits_]());
    last_page_ = page;
    last_ptr_ = slot.get();
    return last_ptr_;
}

void SparseMemory::read(uint64_t addr, uint8_t* out, uint64_t n) {
    const uint64_t mask = page_bytes() - 1;
    while (n) {
        uint64_t off = addr & mask, chunk = std::min(n, page_bytes() - off);
        const uint8_t* p = find(addr >> page_bits_);
        if (p) std::memcpy(out, p + off, chunk);
        else std::memset(out, 0, chunk);  // never written: zero, and nothing allocated
        addr += chunk; out += chunk; n -= chunk;
    }
}

void SparseMemory::write(uint64_t addr, const uint8_t* in, uint64_t n, const uint8_t* strobe) {
    const uint64_t mask = page_bytes() - 1;
    while (n) {
        uint64_t off = addr & mask, chunk = std::min(n, page_bytes() - off);
        uint8_t* p = find(addr >> page_bits_);
        if (!p) {
            // Zeros into a page that does not exist change nothing: keep it absent.
            bool nothing = strobe ? true : all_zero(in, chunk);
            if (strobe)
                for (uint64_t i = 0; i < chunk; ++i)
                    if (strobe[i] && in[i]) { nothing = false; break; }
            if (!nothing) p = touch(addr >> page_bits_);
        }
        if (p) {
            if (!strobe) std::memcpy(p + off, in, chunk);
            else
                for (uint64_t i = 0; i < chunk; ++i)
                    if (strobe[i]) p[off + i] = in[i];
        }
        addr += chunk; in += chunk; n -= chunk;
        if (strobe) strobe += chunk;
    }
}

// ---- Port: shared address-channel logic ----------------------------------------------------

Burst Port::make_burst(const AxiAddr& a) {
    Burst b;
    b.id = uint32_t(a.id.get());
    b.addr = a.addr.get();
    b.beats = uint32_t(a.len.get()) + 1;
    b.size = 1u << a.size.get();
    b.kind = uint32_t(a.burst.get());
    return b;
}

bool Port::check_burst(const Burst& b, const char* ch) {
    std::string at = name_ + ": " + ch + " at cycle " + std::to_string(h_->cycle) + " (addr " +
                     hex(b.addr) + ", " + std::to_string(b.beats) + " beats of " +
                     std::to_string(b.size) + " bytes): ";
    if (b.kind == 3) { h_->fail(at + "reserved burst type 0b11"); return false; }
    if (b.size > uint32_t(bytes_)) {
        h_->fail(at + "transfer size wider than the " + std::to_string(bytes_) + "-byte bus");
        return false;
    }
    if (b.kind == 1) {
        uint64_t last = (b.addr & ~uint64_t(b.size - 1)) + uint64_t(b.beats) * b.size - 1;
        if ((b.addr >> 12) != (last >> 12)) {
            h_->fail(at + "INCR burst crosses a 4 KiB boundary");
            return false;
        }
    } else if (b.kind == 2) {
        if (!(b.beats == 2 || b.beats == 4 || b.beats == 8 || b.beats == 16) ||
            (b.addr & (b.size - 1))) {
            h_->fail(at + "WRAP burst needs 2/4/8/16 beats and an aligned address");
            return false;
        }
    } else if (b.beats > 16) {
        h_->fail(at + "FIXED burst longer than 16 beats");
        return false;
    }
    return true;
}

bool Port::check_addr(const AxiAddr& a, AddrCheck& c, bool fired, const char* ch) {
    bool valid = a.valid.get();
    if (c.waiting) {
        if (!valid) {
            h_->fail(name_ + ": " + ch + "VALID dropped before " + ch + "READY at cycle " +
                     std::to_string(h_->cycle) + " (addr " + hex(c.addr) + ")");
            return false;
        }
        if (a.addr.get() != c.addr || a.len.get() != c.len || a.size.get() != c.size ||
            a.burst.get() != c.burst || a.id.get() != c.id) {
            h_->fail(name_ + ": " + ch + " payload changed while waiting for " + ch +
                     "READY at cycle " + std::to_string(h_->cycle) + " (addr " + hex(c.addr) +
                     " -> " + hex(a.addr.get()) + ", len " + std::to_string(c.len) + " -> " +
                     std::to_string(a.len.get()) + ")");
            return false;
        }
    }
    c.waiting = valid && !fired;
    if (c.waiting) {
        c.id = a.id.get(); c.addr = a.addr.get(); c.len = a.len.get();
        c.size = a.size.get(); c.burst = a.burst.get();
    }
    return true;
}

// ---- ReadSlave ------------------------------------------------------------------------------

void ReadSlave::drive() {
    ar_ready_ = q_.size() < cfg.max_outstanding && !rng_a.chance(cfg.p_stall);
    p_.ar.ready.set(ar_ready_);
    // A VALID once raised stays up with the same beat until its handshake (r_valid_ from the
    // last cycle and no fire); a new beat is offered when due and not paused.
    bool hold = r_valid_ && !r_fire_;
    r_valid_ = hold || (!q_.empty() && q_.front().due <= h_->cycle && !rng_r.chance(cfg.p_stall));
    p_.rvalid.set(r_valid_);
    if (r_valid_) {
        const Burst& b = q_.front();
        if (!hold) {
            uint64_t a = beat_address(b, b.beat) & ~uint64_t(bytes_ - 1);
            h_->mem.read(a, data_.data(), uint64_t(bytes_));
            p_.rdata.set_bytes(data_.data(), bytes_);
        }
        p_.rid.set(b.id);
        p_.rresp.set(b.resp);
        p_.rlast.set(b.beat + 1 == b.beats);
    }
    r_fire_ = false;
}

void ReadSlave::drive_idle() {
    p_.ar.ready.set(0);
    p_.rvalid.set(0);
    ar_ready_ = r_valid_ = r_fire_ = ar_fire_ = false;
}

void ReadSlave::check_reset() {
    if (p_.ar.valid.get())
        h_->fail(name_ + ": ARVALID high during reset at cycle " + std::to_string(h_->cycle));
}

void ReadSlave::sample() {
    bool arvalid = p_.ar.valid.get();
    ar_fire_ = ar_ready_ && arvalid;
    if (arvalid && !ar_ready_) ++stats.addr_wait_cycles;
    check_addr(p_.ar, chk_, ar_fire_, "AR");
    if (ar_fire_) ar_ = make_burst(p_.ar);
    r_fire_ = r_valid_ && p_.rready.get();
}

void ReadSlave::commit() {
    if (r_fire_) {
        Burst& b = q_.front();
        ++stats.beats;
        if (++b.beat == b.beats) q_.pop_front();
    }
    if (ar_fire_) {
        Burst b = ar_;
        if (!check_burst(b, "AR")) return;
        b.due = h_->cycle + std::max<uint32_t>(cfg.latency, 1);
        if (rng_a.chance(cfg.p_error)) {
            b.resp = (rng_a.next() & 1) ? 3 : 2;  // DECERR : SLVERR, on every beat
            ++stats.errors_injected;
        }
        q_.push_back(b);
        ++stats.bursts;
        stats.max_inflight = std::max<uint64_t>(stats.max_inflight, q_.size());
    }
}

// ---- WriteSlave -----------------------------------------------------------------------------

void WriteSlave::drive() {
    aw_ready_ = aw_.size() < cfg.max_outstanding && b_.size() < cfg.max_outstanding &&
                !rng_a.chance(cfg.p_stall);
    p_.aw.ready.set(aw_ready_);
    w_ready_ = !aw_.empty() && !rng_d.chance(cfg.p_stall);
    p_.wready.set(w_ready_);
    bool hold = b_valid_ && !b_fire_;
    b_valid_ = hold || (!b_.empty() && b_.front().due <= h_->cycle && !rng_r.chance(cfg.p_stall));
    p_.bvalid.set(b_valid_);
    if (b_valid_) {
        p_.bid.set(b_.front().id);
        p_.bresp.set(b_.front().resp);
    }
    b_fire_ = false;
}

void WriteSlave::drive_idle() {
    p_.aw.ready.set(0);
    p_.wready.set(0);
    p_.bvalid.set(0);
    aw_ready_ = w_ready_ = b_valid_ = aw_fire_ = w_fire_ = b_fire_ = false;
}

void WriteSlave::check_reset() {
    if (p_.aw.valid.get() || p_.wvalid.get())
        h_->fail(name_ + ": AWVALID/WVALID high during reset at cycle " +
                 std::to_string(h_->cycle));
}

void WriteSlave::sample() {
    bool awvalid = p_.aw.valid.get();
    aw_fire_ = aw_ready_ && awvalid;
    if (awvalid && !aw_ready_) ++stats.addr_wait_cycles;
    check_addr(p_.aw, chk_, aw_fire_, "AW");
    if (aw_fire_) awp_ = make_burst(p_.aw);
    bool wvalid = p_.wvalid.get();
    if (w_waiting_) {
        p_.wdata.get_bytes(data_.data(), bytes_);
        if (!wvalid) {
            h_->fail(name_ + ": WVALID dropped before WREADY at cycle " +
                     std::to_string(h_->cycle));
        } else if (std::memcmp(w_prev_.data(), data_.data(), size_t(bytes_)) != 0 ||
                   p_.wlast.get() != w_prev_last_) {
            h_->fail(name_ + ": W payload changed while waiting for WREADY at cycle " +
                     std::to_string(h_->cycle));
        }
    }
    w_fire_ = w_ready_ && wvalid;
    if (w_fire_) {
        p_.wdata.get_bytes(data_.data(), bytes_);
        w_last_ = p_.wlast.get();
        w_strb_ = bytes_ <= 64 ? p_.wstrb.get() : ~uint64_t(0);
    }
    w_waiting_ = wvalid && !w_fire_;
    if (w_waiting_) {
        w_prev_.resize(size_t(bytes_));
        p_.wdata.get_bytes(w_prev_.data(), bytes_);
        w_prev_last_ = p_.wlast.get();
    }
    b_fire_ = b_valid_ && p_.bready.get();
}

void WriteSlave::commit() {
    if (w_fire_) {
        Burst& b = aw_.front();
        bool last = b.beat + 1 == b.beats;
        if (w_last_ != last) {
            h_->fail(name_ + ": WLAST " + (last ? "missing" : "early") + " at beat " +
                     std::to_string(b.beat + 1) + " of " + std::to_string(b.beats) +
                     " (burst at " + hex(b.addr) + ", cycle " + std::to_string(h_->cycle) +
                     ")");
            return;
        }
        uint64_t a = beat_address(b, b.beat);
        uint64_t word = a & ~uint64_t(bytes_ - 1);
        uint64_t strb = w_strb_;
        // Lanes a narrow transfer may use: [a % bytes, end of its size-aligned slot).
        uint64_t lo = a - word, hi = ((a & ~uint64_t(b.size - 1)) + b.size) - word;
        for (int i = 0; i < bytes_; ++i) {
            bool on = bytes_ <= 64 ? (strb >> i) & 1 : true;
            if (on && (uint64_t(i) < lo || uint64_t(i) >= hi)) {
                h_->fail(name_ + ": WSTRB lane " + std::to_string(i) + " outside the transfer "
                         "at " + hex(a) + " (size " + std::to_string(b.size) + "), cycle " +
                         std::to_string(h_->cycle));
                return;
            }
            strb_[size_t(i)] = on;
        }
        h_->mem.write(word, data_.data(), uint64_t(bytes_), strb_.data());
        ++stats.beats;
        if (++b.beat == b.beats) {
            Burst done = b;
            done.due = h_->cycle + std::max<uint32_t>(cfg.latency, 1);
            b_.push_back(done);
            aw_.pop_front();
        }
    }
    if (b_fire_) b_.pop_front();
    if (aw_fire_) {
        Burst b = awp_;
        if (!check_burst(b, "AW")) return;
        if (rng_a.chance(cfg.p_error)) {
            b.resp = (rng_a.next() & 1) ? 3 : 2;
            ++stats.errors_injected;
        }
        aw_.push_back(b);
        ++stats.bursts;
        stats.max_inflight = std::max<uint64_t>(stats.max_inflight, aw_.size() + b_.size());
    }
}

// ---- Harness: one clock cycle ---------------------------------------------------------------

void Harness::step() {
    if (failed()) return;
    const bool idle = in_reset || release_cycles > 0;
    if (idle) {
        for (auto& p : ports) p->drive_idle();
        lite.awvalid.set(0); lite.wvalid.set(0); lite.bready.set(0);
        lite.arvalid.set(0); lite.rready.set(0);
        top->rst_n.set(in_reset ? 0 : 1);
    } else {
        for (auto& p : ports) p->drive();
        lite.awvalid.set(l_aw); lite.awaddr.set(l_addr);
        lite.wvalid.set(l_w); lite.wdata.set(l_wdata); lite.wstrb.set(0xF);
        lite.bready.set(l_b);
        lite.arvalid.set(l_ar); lite.araddr.set(l_addr);
        lite.rready.set(l_r);
        top->rst_n.set(1);
    }
    top->eval();
    if (in_reset) {
        // Registers take their reset values at the first reset edge the kernel sees (delayed
        // by the top's reset registers); from then on every master must keep its VALIDs low
        // (AXI4 spec A3.1.2).
        if (reset_cycles++ > uint64_t(top->reset_flops))
            for (auto& p : ports) p->check_reset();
    } else if (release_cycles > 0) {
        // The kernel is still in reset: no handshakes, and its VALIDs must stay low.
        --release_cycles;
        for (auto& p : ports) p->check_reset();
    } else {
        for (auto& p : ports) p->sample();
        l_aw_fire = l_aw && lite.awready.get();
        l_w_fire = l_w && lite.wready.get();
        l_ar_fire = l_ar && lite.arready.get();
        bool bvalid = lite.bvalid.get(), rvalid = lite.rvalid.get();
        l_b_fire = l_b && bvalid && !l_aw && !l_w;
        l_r_fire = l_r && rvalid && !l_ar;
        if (bvalid && (!l_b || l_aw || l_w))
            fail("s_axi_control: BVALID without a completed write (address and data) at "
                     "cycle " + std::to_string(cycle));
        if (rvalid && (!l_r || l_ar))
            fail("s_axi_control: RVALID without an accepted read address at cycle " +
                 std::to_string(cycle));
        if (l_r_fire) { l_rdata = lite.rdata.get(); l_resp = lite.rresp.get(); }
        if (l_b_fire) l_resp = lite.bresp.get();
    }
    if (tracing) top->trace_dump(2 * cycle);
    top->clk.set(1);
    top->eval();
    if (tracing) top->trace_dump(2 * cycle + 1);
    top->clk.set(0);
    if (!idle) {
        for (auto& p : ports) p->commit();
        if (l_aw_fire) l_aw = false;
        if (l_w_fire) l_w = false;
        if (l_ar_fire) l_ar = false;
        if (l_b_fire) l_b = false;
        if (l_r_fire) l_r = false;
    }
    ++cycle;
}

}  // namespace rf

// ---- C ABI (ctypes) -------------------------------------------------------------------------
//
// Return codes: 0 ok, -1 protocol violation or failed simulation (rf_error gives the message),
// 1 cycle budget exhausted, 2 wall-clock timeout, 3 AXI4-Lite error response.

using rf::Harness;

namespace {

int status(Harness* h) { return h->failed() ? -1 : 0; }

double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Adds the wall and CPU time of one C ABI call that simulates to the harness's totals.
struct SimTimer {
    Harness* h;
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    double c0 = thread_cpu_seconds();
    explicit SimTimer(Harness* hp) : h(hp) {}
    ~SimTimer() {
        h->sim_wall_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                             .count();
        h->sim_cpu_s += thread_cpu_seconds() - c0;
    }
};

int step_n(Harness* h, uint64_t cycles) {
    for (uint64_t i = 0; i < cycles && !h->failed(); ++i) h->step();
    return status(h);
}

int lite_wait(Harness* h, uint64_t budget, bool* pending) {
    uint64_t start = h->cycle;
    while (*pending) {
        if (h->failed()) return -1;
        if (h->cycle - start >= budget) return 1;
        h->step();
    }
    if (h->failed()) return -1;
    return h->l_resp & 2 ? 3 : 0;
}

int reg_read(Harness* h, uint32_t addr, uint32_t* value, uint64_t budget) {
    h->l_addr = addr; h->l_resp = 0;
    h->l_ar = h->l_r = true;
    int rc = lite_wait(h, budget, &h->l_r);
    if (rc == 1) h->l_ar = h->l_r = false;
    *value = uint32_t(h->l_rdata);
    return rc;
}

}  // namespace

extern "C" {

void* rf_create(int page_bits, uint64_t seed) {
    if (page_bits < 12 || page_bits > 20) return nullptr;
    auto* h = new Harness(page_bits);
    h->top.reset(rf::make_top(*h));
    for (size_t i = 0; i < h->ports.size(); ++i) {
        auto& p = h->ports[i];
        p->rng_a.seed(seed * 131 + 3 * i);
        p->rng_d.seed(seed * 131 + 3 * i + 1);
        p->rng_r.seed(seed * 131 + 3 * i + 2);
    }
    return h;
}

void rf_destroy(void* hp) {
    auto* h = static_cast<Harness*>(hp);
    if (h && h->tracing) h->top->trace_close();
    delete h;
}

const char* rf_error(void* hp) { return static_cast<Harness*>(hp)->error.c_str(); }
uint64_t rf_cycle(void* hp) { return static_cast<Harness*>(hp)->cycle; }
uint64_t rf_mem_pages(void* hp) { return static_cast<Harness*>(hp)->mem.pages(); }
uint64_t rf_page_bytes(void* hp) { return static_cast<Harness*>(hp)->mem.page_bytes(); }
int rf_num_ports(void* hp) { return int(static_cast<Harness*>(hp)->ports.size()); }

const char* rf_port_name(void* hp, int i) {
    auto* h = static_cast<Harness*>(hp);
    return i >= 0 && size_t(i) < h->ports.size() ? h->ports[size_t(i)]->name().c_str() : "";
}

int rf_port_config(void* hp, int i, uint32_t latency, uint32_t max_outstanding, double p_stall,
                   double p_error) {
    auto* h = static_cast<Harness*>(hp);
    if (i < 0 || size_t(i) >= h->ports.size() || max_outstanding < 1 || p_stall < 0 ||
        p_stall >= 1 || p_error < 0 || p_error > 1)
        return -1;
    auto& c = h->ports[size_t(i)]->cfg;
    c.latency = latency;
    c.max_outstanding = max_outstanding;
    c.p_stall = p_stall;
    c.p_error = p_error;
    return 0;
}

void rf_port_stats(void* hp, int i, uint64_t* out) {
    auto* h = static_cast<Harness*>(hp);
    const auto& s = h->ports[size_t(i)]->stats;
    out[0] = s.bursts; out[1] = s.beats; out[2] = s.errors_injected;
    out[3] = s.max_inflight; out[4] = s.addr_wait_cycles;
}

void rf_clear_stats(void* hp) {
    for (auto& p : static_cast<Harness*>(hp)->ports) p->stats = rf::PortStats{};
}

// Reset the kernel (ap_rst_n low for `cycles` cycles) and every memory port's state in flight;
// memory contents stay. Clears a recorded protocol violation.
int rf_reset(void* hp, uint32_t cycles) {
    auto* h = static_cast<Harness*>(hp);
    SimTimer timer(h);
    h->error.clear();
    for (auto& p : h->ports) p->clear();
    h->l_aw = h->l_w = h->l_b = h->l_ar = h->l_r = false;
    h->in_reset = true;
    h->reset_cycles = 0;
    const uint32_t least = 2 + uint32_t(h->top->reset_flops);
    for (uint32_t i = 0; i < std::max<uint32_t>(cycles, least); ++i) h->step();
    h->in_reset = false;
    h->release_cycles = uint64_t(h->top->reset_flops);
    for (int i = 0; i < h->top->reset_flops; ++i) h->step();
    return status(h);
}

int rf_step(void* hp, uint64_t cycles) {
    auto* h = static_cast<Harness*>(hp);
    SimTimer timer(h);
    return step_n(h, cycles);
}

int rf_reg_write(void* hp, uint32_t addr, uint32_t value, uint64_t budget) {
    auto* h = static_cast<Harness*>(hp);
    if (h->failed()) return -1;
    SimTimer timer(h);
    h->l_addr = addr; h->l_wdata = value; h->l_resp = 0;
    h->l_aw = h->l_w = h->l_b = true;
    int rc = lite_wait(h, budget, &h->l_b);
    if (rc == 1) h->l_aw = h->l_w = h->l_b = false;
    return rc;
}

int rf_reg_read(void* hp, uint32_t addr, uint32_t* value, uint64_t budget) {
    auto* h = static_cast<Harness*>(hp);
    if (h->failed()) return -1;
    SimTimer timer(h);
    return reg_read(h, addr, value, budget);
}

// Poll the control register (as a host does) every `poll` cycles until ap_done; *cycles gets
// the cycles simulated. 1: more than max_cycles; 2: more than timeout_s of wall time.
int rf_run_until_done(void* hp, uint64_t max_cycles, double timeout_s, uint32_t poll,
                      uint64_t* cycles) {
    auto* h = static_cast<Harness*>(hp);
    SimTimer timer(h);
    const uint64_t start = h->cycle;
    const auto t0 = std::chrono::steady_clock::now();
    int rc = 0;
    for (;;) {
        uint32_t ctrl = 0;
        rc = h->failed() ? -1 : reg_read(h, 0x00, &ctrl, 1000);
        if (rc != 0) break;
        if (ctrl & 0x2) break;
        if (h->cycle - start > max_cycles) { rc = 1; break; }
        std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
        if (dt.count() > timeout_s) { rc = 2; break; }
        rc = step_n(h, poll);
        if (rc != 0) break;
    }
    *cycles = h->cycle - start;
    return rc;
}

// Wall and CPU seconds spent simulating so far (see Harness::sim_wall_s).
void rf_sim_time(void* hp, double* wall, double* cpu) {
    auto* h = static_cast<Harness*>(hp);
    *wall = h->sim_wall_s;
    *cpu = h->sim_cpu_s;
}

int rf_mem_write(void* hp, uint64_t addr, const uint8_t* data, uint64_t n) {
    static_cast<Harness*>(hp)->mem.write(addr, data, n);
    return 0;
}

int rf_mem_read(void* hp, uint64_t addr, uint8_t* out, uint64_t n) {
    static_cast<Harness*>(hp)->mem.read(addr, out, n);
    return 0;
}

int rf_trace_open(void* hp, const char* path) {
    auto* h = static_cast<Harness*>(hp);
    if (!h->top->can_trace()) return -1;
    if (h->tracing) h->top->trace_close();
    h->top->trace_open(path);
    h->tracing = true;
    return 0;
}

int rf_trace_close(void* hp) {
    auto* h = static_cast<Harness*>(hp);
    if (h->tracing) h->top->trace_close();
    h->tracing = false;
    return 0;
}

}  // extern "C"
