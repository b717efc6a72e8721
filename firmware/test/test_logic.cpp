// Host tests of the portable firmware logic: the shared protocol vectors
// (docs/protocol-vectors.txt) and the device behaviour with a fake clock.
//   test_logic <path to protocol-vectors.txt>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "../src/logic/device.h"
#include "../src/logic/protocol.h"

using namespace brb;

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                         \
  do {                                                           \
    checks++;                                                    \
    if (!(cond)) {                                               \
      failures++;                                                \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                              \
      fprintf(stderr, "\n");                                     \
    }                                                            \
  } while (0)

static std::string unescape(const std::string &s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[i + 1];
      if (c == 'n') out += '\n';
      else if (c == 'r') out += '\r';
      else if (c == '\\') out += '\\';
      else if (c == 'x') {
        out += (char)strtol(s.substr(i + 2, 2).c_str(), NULL, 16);
        i += 2;
      }
      i++;
    } else {
      out += s[i];
    }
  }
  return out;
}

static std::string to_hex(const Msg &m) {
  static const char H[] = "0123456789ABCDEF";
  std::string s;
  for (uint8_t i = 0; i < m.len; i++) {
    s += H[m.b[i] >> 4];
    s += H[m.b[i] & 15];
  }
  return s;
}

static std::string host_text(const HostMsg &h) {
  if (h.kind == HOST_PING) return "ping";
  return std::string("show ") + show_name(h.show);
}

// Builds a device message from its canonical text, with the firmware's encoders.
static bool device_from_text(const std::string &t, Msg &m) {
  unsigned a, b, c, d, e, f;
  char serial[64];
  char shown[32];
  if (sscanf(t.c_str(), "hello proto=%u fw=%u.%u.%u caps=0x%x serial=%63s", &a, &b, &c, &d, &e,
             serial) == 6) {
    uint8_t fw[3] = {(uint8_t)b, (uint8_t)c, (uint8_t)d};
    msg_hello(m, fw, (uint8_t)e, serial);
    return a == PROTOCOL_VERSION;
  }
  if (sscanf(t.c_str(), "press seq=%u armed=%u", &a, &b) == 2) {
    msg_press(m, (uint16_t)a, b);
    return true;
  }
  if (sscanf(t.c_str(), "release seq=%u hold_ms=%u armed=%u", &a, &b, &c) == 3) {
    msg_release(m, (uint16_t)a, b, c);
    return true;
  }
  if (sscanf(t.c_str(), "arming armed=%u", &a) == 1) {
    msg_arming(m, a);
    return true;
  }
  if (sscanf(t.c_str(), "heartbeat uptime_ms=%u shown=%31s armed=%u", &a, shown, &b) == 3) {
    for (uint8_t s = 0; s < SHOW_COUNT; s++) {
      if (strcmp(shown, show_name(s)) == 0) {
        msg_heartbeat(m, a, s, b);
        return true;
      }
    }
  }
  (void)f;
  return false;
}

struct Vec {
  std::string kind, meaning, message, line;
};

static std::vector<Vec> load(const char *path) {
  std::vector<Vec> v;
  FILE *fp = fopen(path, "r");
  if (!fp) {
    fprintf(stderr, "cannot open %s\n", path);
    exit(2);
  }
  char buf[1024];
  while (fgets(buf, sizeof buf, fp)) {
    std::string l(buf);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
    if (l.empty() || l[0] == '#') continue;
    std::vector<std::string> f;
    size_t start = 0, tab;
    while ((tab = l.find('\t', start)) != std::string::npos) {
      f.push_back(l.substr(start, tab - start));
      start = tab + 1;
    }
    f.push_back(l.substr(start));
    if (f.size() != 4) {
      fprintf(stderr, "malformed vector: %s\n", l.c_str());
      exit(2);
    }
    v.push_back({f[0], f[1], f[2], unescape(f[3])});
  }
  fclose(fp);
  return v;
}

static void test_vectors(const std::vector<Vec> &vs) {
  int d2h = 0, h2d = 0, bad = 0, streams = 0;
  for (const Vec &v : vs) {
    if (v.kind == "d2h") {
      Msg m;
      CHECK(device_from_text(v.meaning, m), "cannot build %s", v.meaning.c_str());
      CHECK(to_hex(m) == v.message, "%s: %s != %s", v.meaning.c_str(), to_hex(m).c_str(),
            v.message.c_str());
      char line[LINE_BUFFER];
      line_encode(m, line);
      CHECK(v.line == line, "%s: line %s", v.meaning.c_str(), line);
      uint8_t report[REPORT_SIZE];
      hid_pack(m, report);
      Msg back;
      CHECK(hid_unpack(report, REPORT_SIZE, back) && to_hex(back) == v.message, "%s hid",
            v.meaning.c_str());
      // The device's own decoder frames it (and, being a device message, refuses to obey it).
      LineDecoder d;
      Msg got;
      FrameResult last = FRAME_NONE;
      for (char c : v.line) last = d.push((uint8_t)c, got);
      CHECK(last == FRAME_OK && to_hex(got) == v.message, "%s framing", v.meaning.c_str());
      HostMsg h;
      CHECK(decode_host(got, h) == DEC_ERR_TYPE, "%s obeyed as a host message",
            v.meaning.c_str());
      d2h++;
    } else if (v.kind == "h2d") {
      LineDecoder d;
      Msg got;
      FrameResult last = FRAME_NONE;
      for (char c : v.line) last = d.push((uint8_t)c, got);
      CHECK(last == FRAME_OK, "%s not framed", v.meaning.c_str());
      CHECK(to_hex(got) == v.message, "%s bytes", v.meaning.c_str());
      HostMsg h;
      CHECK(decode_host(got, h) == DEC_OK && host_text(h) == v.meaning, "%s decoded as %s",
            v.meaning.c_str(), host_text(h).c_str());
      char line[LINE_BUFFER];
      line_encode(got, line);
      CHECK(v.line == line, "%s re-encoded as %s", v.meaning.c_str(), line);
      h2d++;
    } else if (v.kind == "bad") {
      LineDecoder d;
      Msg got;
      std::vector<FrameResult> rs;
      for (char c : v.line) {
        FrameResult r = d.push((uint8_t)c, got);
        if (r != FRAME_NONE) rs.push_back(r);
      }
      CHECK(rs.size() == 1, "%s: %zu results", v.line.c_str(), rs.size());
      if (rs.size() != 1) continue;
      if (rs[0] != FRAME_OK) {
        CHECK(v.meaning == frame_error_name(rs[0]), "%s: %s, expected %s", v.line.c_str(),
              frame_error_name(rs[0]), v.meaning.c_str());
      } else {
        // A well-framed message that is invalid: the device must not obey it. (The error kind
        // is checked on the host side; the device only knows host-direction types.)
        HostMsg h;
        CHECK(decode_host(got, h) != DEC_OK, "%s obeyed", v.line.c_str());
        CHECK(v.meaning == "length" || v.meaning == "value" || v.meaning == "type",
              "%s framed although %s", v.line.c_str(), v.meaning.c_str());
      }
      bad++;
    } else if (v.kind == "stream") {
      std::vector<std::string> want;
      size_t start = 0, bar;
      while ((bar = v.meaning.find('|', start)) != std::string::npos) {
        want.push_back(v.meaning.substr(start, bar - start));
        start = bar + 1;
      }
      want.push_back(v.meaning.substr(start));
      LineDecoder d;
      Msg got;
      std::vector<std::string> texts;
      for (char c : v.line) {
        if (d.push((uint8_t)c, got) == FRAME_OK) {
          HostMsg h;
          if (decode_host(got, h) == DEC_OK) {
            texts.push_back(host_text(h));
          } else {
            // A device message: compare by re-encoding the expected text.
            for (const std::string &w : want) {
              Msg m;
              if (device_from_text(w, m) && to_hex(m) == to_hex(got)) texts.push_back(w);
            }
          }
        }
      }
      CHECK(texts == want, "stream %s: got %zu messages", v.meaning.c_str(), texts.size());
      streams++;
    }
  }
  CHECK(d2h >= 10 && h2d >= 7 && bad >= 10 && streams >= 3, "too few vectors %d %d %d %d", d2h,
        h2d, bad, streams);
  printf("vectors: %d d2h, %d h2d, %d bad, %d streams\n", d2h, h2d, bad, streams);
}

static std::string drain(Device &d) {
  std::string s;
  Msg m;
  while (d.next_out(m)) {
    s += to_hex(m).substr(0, 2);
    s += ' ';
  }
  return s;
}

static void test_crc() {
  const uint8_t check[] = "123456789";
  CHECK(crc16(check, 9) == 0x29b1, "crc %04x", crc16(check, 9));
}

static const DeviceInfo INFO = {"BRB-TEST", {0, 1, 0}, CAP_LED | CAP_ARMING | CAP_SERIAL};

static void test_debounce_and_press() {
  Device d(INFO);
  uint32_t t = 1000;
  d.begin(t, false, true);
  CHECK(drain(d) == "01 ", "hello first");
  // Contact bounce for 15 ms: no press.
  for (int i = 0; i < 15; i++) d.poll(++t, i % 2 == 0, true);
  d.poll(++t, false, true);
  for (int i = 0; i < 30; i++) d.poll(++t, false, true);
  CHECK(drain(d) == "", "bounce made a press");
  // Held down: one press after 20 ms, one release with the hold time.
  uint32_t down = t;
  for (int i = 0; i < 150; i++) d.poll(++t, true, true);
  Msg m;
  CHECK(d.next_out(m) && m.b[0] == T_PRESS && m.b[1] == 1 && m.b[3] == 1, "press seq 1");
  for (int i = 0; i < 40; i++) d.poll(++t, false, true);
  CHECK(d.next_out(m) && m.b[0] == T_RELEASE && m.b[1] == 1, "release");
  uint32_t hold = m.b[3] | (m.b[4] << 8) | ((uint32_t)m.b[5] << 16) | ((uint32_t)m.b[6] << 24);
  CHECK(hold >= 145 && hold <= 155, "hold %u for ~150 ms down (since %u)", hold, down);
  // A second press gets the next sequence number.
  for (int i = 0; i < 40; i++) d.poll(++t, true, true);
  CHECK(d.next_out(m) && m.b[0] == T_PRESS && m.b[1] == 2, "seq 2");
}

static void test_held_at_boot_is_not_a_press() {
  Device d(INFO);
  d.begin(0, true, true);
  for (uint32_t t = 1; t < 500; t++) d.poll(t, true, true);
  CHECK(drain(d) == "01 ", "held at boot: %s", drain(d).c_str());
}

static void test_arming() {
  Device d(INFO);
  uint32_t t = 0;
  d.begin(t, false, true);
  drain(d);
  for (int i = 0; i < 60; i++) d.poll(++t, false, false);
  Msg m;
  CHECK(d.next_out(m) && m.b[0] == T_ARMING && m.b[1] == 0, "disarmed");
  for (int i = 0; i < 40; i++) d.poll(++t, true, false);
  CHECK(d.next_out(m) && m.b[0] == T_PRESS && m.b[3] == 0, "press says disarmed");
  // A 30 ms flicker of the cover switch is not an arming change.
  for (int i = 0; i < 30; i++) d.poll(++t, true, true);
  for (int i = 0; i < 100; i++) d.poll(++t, true, false);
  CHECK(drain(d) == "", "cover flicker reported");
}

static void test_heartbeat_watchdog_and_leds() {
  Device d(INFO);
  uint32_t t = 0;
  d.begin(t, false, true);
  drain(d);
  CHECK(d.shown(t) == SHOW_NO_CONNECTION, "no host yet");
  for (int i = 0; i < 1000; i++) d.poll(++t, false, true);
  Msg m;
  CHECK(d.next_out(m) && m.b[0] == T_HEARTBEAT && m.b[5] == SHOW_NO_CONNECTION, "heartbeat");
  // The host says paused, over the serial line.
  char line[LINE_BUFFER];
  Msg show = {2, {T_SHOW, SHOW_PAUSED}};
  line_encode(show, line);
  for (char *p = line; *p; p++) d.on_host_byte((uint8_t)*p, t);
  CHECK(d.shown(t) == SHOW_PAUSED && d.led(t), "paused is solid");
  CHECK(d.led(t + 123) && d.led(t + 2999), "solid");
  // Silence: after 3 s the light says the host is gone.
  CHECK(d.shown(t + 2999) == SHOW_PAUSED, "before timeout");
  CHECK(d.shown(t + 3000) == SHOW_NO_CONNECTION, "after timeout");
  // Ping: hello again.
  Msg ping = {1, {T_PING}};
  d.on_host_message(ping, t);
  CHECK(drain(d) == "01 ", "ping answered with hello");
  // Garbage and a bad CRC change nothing and are counted.
  const char *junk = "\x01\xff$8101FFFF\n$zz\n";
  for (const char *p = junk; *p; p++) d.on_host_byte((uint8_t)*p, t);
  CHECK(d.bad_frames() == 2, "bad frames %u", d.bad_frames());
  CHECK(d.shown(t) == SHOW_PAUSED, "garbage changed the light");
  // Patterns.
  CHECK(!led_pattern(SHOW_RUNNING, 0) && !led_pattern(SHOW_RUNNING, 777), "running dark");
  CHECK(led_pattern(SHOW_DRAINING, 0) && !led_pattern(SHOW_DRAINING, 300), "draining blinks");
  CHECK(led_pattern(SHOW_NO_CONNECTION, 50) && !led_pattern(SHOW_NO_CONNECTION, 500),
        "flash");
  CHECK(led_pattern(SHOW_ERROR, 250) && !led_pattern(SHOW_ERROR, 150), "double flash");
  CHECK(led_pattern(SHOW_SENDING, 0) && led_pattern(SHOW_SENDING, 749) &&
            !led_pattern(SHOW_SENDING, 750) && !led_pattern(SHOW_SENDING, 999),
        "sending: on with a 250 ms gap");
  // Every state the protocol defines has its own pattern, none the unknown-state flicker.
  for (uint8_t s = 0; s < SHOW_COUNT; s++) {
    bool flicker = true;
    for (uint32_t t = 0; t < 2000; t += 50) flicker &= led_pattern(s, t) == ((t % 200) < 100);
    CHECK(!flicker, "state %u falls back to the unknown pattern", s);
    CHECK(strcmp(show_name(s), "?") != 0, "state %u has no name", s);
  }
}

static void test_millis_wraparound() {
  Device d(INFO);
  uint32_t t = 0xFFFFFF00u;
  d.begin(t, false, true);
  drain(d);
  for (int i = 0; i < 100; i++) d.poll(++t, true, true);
  for (int i = 0; i < 200; i++) d.poll(++t, false, true);
  Msg m;
  CHECK(d.next_out(m) && m.b[0] == T_PRESS, "press across wrap");
  CHECK(d.next_out(m) && m.b[0] == T_RELEASE && m.b[3] == 100, "hold across wrap %u", m.b[3]);
}

static void test_queue_overflow_keeps_newest() {
  Device d(INFO);
  uint32_t t = 0;
  d.begin(t, false, true);
  for (int i = 0; i < 10000; i++) d.poll(++t, false, true);  // 10 heartbeats, nobody drains
  CHECK(d.dropped() == 11 - Device::QUEUE, "dropped %u", d.dropped());
  Msg m;
  int n = 0;
  while (d.next_out(m)) n++;
  CHECK(n == Device::QUEUE, "queue %d", n);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s docs/protocol-vectors.txt\n", argv[0]);
    return 2;
  }
  test_crc();
  test_vectors(load(argv[1]));
  test_debounce_and_press();
  test_held_at_boot_is_not_a_press();
  test_arming();
  test_heartbeat_watchdog_and_leds();
  test_millis_wraparound();
  test_queue_overflow_keeps_newest();
  printf("%d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
