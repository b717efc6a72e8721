#include "device.h"

namespace brb {

bool Debouncer::update(bool raw, uint32_t now) {
  if (raw != raw_) {
    raw_ = raw;
    since_ = now;
    return false;
  }
  if (raw_ != stable_ && (uint32_t)(now - since_) >= ms_) {
    stable_ = raw_;
    return true;
  }
  return false;
}

bool led_pattern(uint8_t show, uint32_t t) {
  switch (show) {
    case SHOW_RUNNING: return false;                 // dark: nothing to see
    case SHOW_PAUSED: return true;                   // solid: the fleet has stopped
    case SHOW_DRAINING: return (t % 500) < 250;      // 2 Hz blink: stopping
    case SHOW_RAMPING: return (t % 2000) < 1000;     // slow 0.5 Hz blink: coming back
    case SHOW_NO_CONNECTION: return (t % 2000) < 100;  // short flash: cannot tell
    case SHOW_ERROR: {                               // double flash: a person must look
      uint32_t p = t % 1000;
      return p < 100 || (p >= 200 && p < 300);
    }
    case SHOW_SENDING: return (t % 1000) < 750;      // on, winking: the host is trying
    default: return (t % 200) < 100;  // unknown: fast flicker
  }
}

Device::Device(const DeviceInfo &info)
    : info_(info),
      button_(DEBOUNCE_MS),
      arm_(ARM_DEBOUNCE_MS),
      boot_(0),
      pressed_at_(0),
      last_heartbeat_(0),
      last_host_(0),
      heard_host_(false),
      show_(SHOW_NO_CONNECTION),
      seq_(0),
      bad_frames_(0),
      dropped_(0),
      head_(0),
      count_(0) {}

void Device::begin(uint32_t now, bool down, bool armed) {
  boot_ = now;
  last_heartbeat_ = now;
  // A button held down at power-up is not a press: only a later edge counts.
  button_.reset(down, now);
  arm_.reset(armed, now);
  hello();
}

void Device::hello() {
  Msg m;
  msg_hello(m, info_.firmware, info_.caps, info_.serial);
  push(m);
}

void Device::poll(uint32_t now, bool down, bool armed) {
  Msg m;
  if (arm_.update(armed, now)) {
    msg_arming(m, arm_.level());
    push(m);
  }
  if (button_.update(down, now)) {
    if (button_.level()) {
      seq_++;
      pressed_at_ = now;
      msg_press(m, seq_, arm_.level());
    } else {
      msg_release(m, seq_, now - pressed_at_, arm_.level());
    }
    push(m);
  }
  if ((uint32_t)(now - last_heartbeat_) >= HEARTBEAT_MS) {
    last_heartbeat_ = now;
    msg_heartbeat(m, now - boot_, shown(now), arm_.level());
    push(m);
  }
}

void Device::on_host_byte(uint8_t c, uint32_t now) {
  Msg m;
  FrameResult r = decoder_.push(c, m);
  if (r == FRAME_OK) {
    on_host_message(m, now);
  } else if (r != FRAME_NONE) {
    bad_frames_++;
  }
}

void Device::on_host_message(const Msg &m, uint32_t now) {
  HostMsg h;
  if (decode_host(m, h) != DEC_OK) {
    bad_frames_++;
    return;
  }
  heard_host_ = true;
  last_host_ = now;
  if (h.kind == HOST_SHOW) {
    show_ = h.show;
  } else {
    hello();
  }
}

bool Device::host_active(uint32_t now) const {
  return heard_host_ && (uint32_t)(now - last_host_) < HOST_TIMEOUT_MS;
}

uint8_t Device::shown(uint32_t now) const {
  return host_active(now) ? show_ : (uint8_t)SHOW_NO_CONNECTION;
}

void Device::push(const Msg &m) {
  if (count_ == QUEUE) {
    // The link is not draining; drop the oldest (stale heartbeats go first in practice).
    head_ = (uint8_t)((head_ + 1) % QUEUE);
    count_--;
    dropped_++;
  }
  queue_[(head_ + count_) % QUEUE] = m;
  count_++;
}

bool Device::next_out(Msg &m) {
  if (count_ == 0) return false;
  m = queue_[head_];
  head_ = (uint8_t)((head_ + 1) % QUEUE);
  count_--;
  return true;
}

}  // namespace brb
