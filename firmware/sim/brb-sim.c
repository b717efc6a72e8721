/*
 * brb-sim: runs the ATmega328P build of the office-button firmware in simavr, with
 *   - UART0 bridged to a pseudo-terminal (the host's "serial port"; a symlink names it),
 *   - the button (PD2 = Arduino pin 2) and arming input (PD3 = pin 3) driven by commands on
 *     stdin, the LED pin (PB1 = pin 9) reported on stdout,
 *   - the simulation throttled to real time, so the firmware's millis() and the host's clock
 *     agree (debounce, hold time, host watchdog).
 *
 *   brb-sim FIRMWARE.elf LINK
 *
 * stdin, one command per line:
 *   press | release | arm | disarm
 *   hold MS             press, and release after MS milliseconds of simulated time; prints
 *                       "released SIM_MS" then (tests wait for it instead of sleeping)
 *   garbage-host TEXT   TEXT and a newline "from the device" onto the pty (the host must survive)
 *   garbage-dev TEXT    TEXT and a newline into the firmware's UART (the firmware must survive)
 *   quit
 * stdout: "ready PTY", then "led 0|1 SIM_MS" on every LED pin change, "ok COMMAND" after each
 * command, "released SIM_MS" when a hold ends.
 *
 * simavr 1.6 does not model the internal pull-ups, so idle inputs are driven high here. The
 * pty bridge is done in this single thread (no uart_pty thread, which can hang on shutdown).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_ioport.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"

#define FREQ 16000000UL

static int master_fd = -1;
static int uart_xoff = 0;
static uint8_t to_dev[4096];
static size_t to_dev_len = 0;
static uint8_t to_host[4096];
static size_t to_host_len = 0;
static avr_t *avr;

static uint64_t sim_ms(void) { return avr->cycle / (FREQ / 1000); }

static void uart_out_cb(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)param;
  if (to_host_len < sizeof to_host) to_host[to_host_len++] = (uint8_t)value;
}

static void xon_cb(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)value;
  (void)param;
  uart_xoff = 0;
}

static void xoff_cb(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)value;
  (void)param;
  uart_xoff = 1;
}

static void led_cb(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)param;
  printf("led %u %llu\n", value ? 1 : 0, (unsigned long long)sim_ms());
  fflush(stdout);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void queue(uint8_t *buf, size_t *len, size_t cap, const char *s, size_t n) {
  if (*len + n > cap) n = cap - *len;
  memcpy(buf + *len, s, n);
  *len += n;
}

static avr_irq_t *button, *arm, *uart_in;
static const char *link_path;
/* Simulated millisecond at which a "hold" releases the button; 0: no hold under way. */
static uint64_t release_at = 0;

/* The device is "unplugged" when we exit: its name goes away with it. */
static void remove_link(void) { unlink(link_path); }

/* Returns 0 to quit. */
static int command(char *line) {
  line[strcspn(line, "\r\n")] = 0;
  if (strcmp(line, "press") == 0) {
    avr_raise_irq(button, 0);
  } else if (strcmp(line, "release") == 0) {
    avr_raise_irq(button, 1);
  } else if (strncmp(line, "hold ", 5) == 0) {
    long ms = strtol(line + 5, NULL, 10);
    if (ms <= 0) {
      fprintf(stderr, "brb-sim: hold needs a positive number of milliseconds\n");
    } else {
      avr_raise_irq(button, 0);
      release_at = sim_ms() + (uint64_t)ms;
    }
  } else if (strcmp(line, "arm") == 0) {
    avr_raise_irq(arm, 1);
  } else if (strcmp(line, "disarm") == 0) {
    avr_raise_irq(arm, 0);
  } else if (strncmp(line, "garbage-host ", 13) == 0) {
    queue(to_host, &to_host_len, sizeof to_host, line + 13, strlen(line + 13));
    queue(to_host, &to_host_len, sizeof to_host, "\n", 1);
  } else if (strncmp(line, "garbage-dev ", 12) == 0) {
    queue(to_dev, &to_dev_len, sizeof to_dev, line + 12, strlen(line + 12));
    queue(to_dev, &to_dev_len, sizeof to_dev, "\n", 1);
  } else if (strcmp(line, "quit") == 0) {
    return 0;
  } else if (line[0]) {
    fprintf(stderr, "brb-sim: unknown command '%s'\n", line);
  }
  printf("ok %s\n", line);
  fflush(stdout);
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s FIRMWARE.elf LINK\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  elf_firmware_t f;
  memset(&f, 0, sizeof f);
  if (elf_read_firmware(argv[1], &f) != 0) {
    fprintf(stderr, "brb-sim: cannot read %s\n", argv[1]);
    return 1;
  }
  avr = avr_make_mcu_by_name("atmega328p");
  if (!avr) return 1;
  avr_init(avr);
  avr_load_firmware(avr, &f);
  avr->frequency = FREQ;
  avr->log = LOG_ERROR;

  /* The pty: raw on the slave side (no echo, no line discipline mangling our frames), and the
   * slave kept open by us so the master never sees a hangup while the host reconnects. */
  int slave_fd;
  char name[256];
  if (openpty(&master_fd, &slave_fd, name, NULL, NULL) != 0) {
    perror("openpty");
    return 1;
  }
  struct termios t;
  tcgetattr(slave_fd, &t);
  cfmakeraw(&t);
  tcsetattr(slave_fd, TCSANOW, &t);
  fcntl(master_fd, F_SETFL, fcntl(master_fd, F_GETFL) | O_NONBLOCK);
  link_path = argv[2];
  unlink(link_path);
  if (symlink(name, link_path) != 0) {
    perror("symlink");
    return 1;
  }
  atexit(remove_link);

  uint32_t flags = 0;
  avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
  flags &= ~(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
  avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
  uart_in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
                          uart_out_cb, NULL);
  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON),
                          xon_cb, NULL);
  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF),
                          xoff_cb, NULL);

  button = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 2);
  arm = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 3);
  avr_raise_irq(button, 1); /* released (pull-up) */
  avr_raise_irq(arm, 1);    /* armed: no cover closed */
  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), 1), led_cb, NULL);

  printf("ready %s\n", name);
  fflush(stdout);
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

  char cmd[1024];
  size_t cmd_len = 0;
  uint64_t start = now_ns();
  for (;;) {
    for (int i = 0; i < 2000; i++) {
      int state = avr_run(avr);
      if (state == cpu_Done || state == cpu_Crashed) {
        fprintf(stderr, "brb-sim: firmware stopped (state %d)\n", state);
        return 1;
      }
    }
    if (release_at != 0 && sim_ms() >= release_at) {
      avr_raise_irq(button, 1);
      release_at = 0;
      printf("released %llu\n", (unsigned long long)sim_ms());
      fflush(stdout);
    }
    /* Host -> firmware: feed the UART while its fifo has room. */
    while (to_dev_len > 0 && !uart_xoff) {
      avr_raise_irq(uart_in, to_dev[0]);
      memmove(to_dev, to_dev + 1, --to_dev_len);
    }
    /* Firmware -> host. If the host has not opened the port the bytes pile up in the pty
     * buffer and then are dropped, like a real serial line with nobody listening. */
    if (to_host_len > 0) {
      ssize_t w = write(master_fd, to_host, to_host_len);
      if (w > 0) {
        memmove(to_host, to_host + w, to_host_len - (size_t)w);
        to_host_len -= (size_t)w;
      } else if (w < 0 && errno != EAGAIN) {
        to_host_len = 0;
      } else if (to_host_len == sizeof to_host) {
        to_host_len = 0;
      }
    }
    if (to_dev_len < sizeof to_dev) {
      ssize_t r = read(master_fd, to_dev + to_dev_len, sizeof to_dev - to_dev_len);
      if (r > 0) to_dev_len += (size_t)r;
    }
    ssize_t r = read(0, cmd + cmd_len, sizeof cmd - 1 - cmd_len);
    if (r == 0) return 0; /* stdin closed: the test is gone */
    if (r > 0) {
      cmd_len += (size_t)r;
      char *nl;
      while ((nl = memchr(cmd, '\n', cmd_len)) != NULL) {
        *nl = 0;
        if (!command(cmd)) return 0;
        size_t used = (size_t)(nl - cmd) + 1;
        memmove(cmd, nl + 1, cmd_len - used);
        cmd_len -= used;
      }
      if (cmd_len == sizeof cmd - 1) cmd_len = 0;
    }
    /* Throttle to real time. */
    uint64_t sim_ns = avr->cycle * 1000ULL / (FREQ / 1000000ULL);
    uint64_t wall_ns = now_ns() - start;
    if (sim_ns > wall_ns + 1000000ULL) {
      struct timespec ts = {0, (long)(sim_ns - wall_ns)};
      if (ts.tv_nsec > 100000000L) ts.tv_nsec = 100000000L;
      nanosleep(&ts, NULL);
    }
  }
}
