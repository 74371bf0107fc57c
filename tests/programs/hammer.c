/* A hostile guest program for tests/tests/hostile_guest.rs: it attacks an
 * ivshmem device through the guest's sysfs files, as a guest root user can.
 *
 *   hammer SLOT ROUNDS [--concurrent] [--then ARGS...]
 *
 * 1. BAR0 (sysfs resource0, mapped: one page, of which the device's
 *    registers are the first 256 bytes): a read and a write of every size
 *    (1, 2, 4, 8 bytes and 16-byte SSE moves) at every offset of the page.
 * 2. The configuration space (sysfs config): ROUNDS rounds of writes of 1, 2
 *    and 4 bytes at every offset, with values that put the BARs at all
 *    ones, over RAM, over the APIC, over each other and past 4 GiB, with
 *    memory decoding switched on and off in between. With --concurrent, one
 *    process per online CPU, pinned to it, sweeps BAR0 as in 1 over and over
 *    meanwhile, so that vCPUs access the device while another moves it; the
 *    rounds go on until each has finished a sweep.
 * 3. Restores the configuration header it saved, checks that BAR0 answers
 *    with the IVPosition it read first, and with --then, executes
 *    /bin/kvmshm-demo ARGS, so that the guest goes on using the device.
 *
 * Exit status: 0 if every system call behaved and the device came back,
 * 1 otherwise. The VMM's survival and its log are checked on the host. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096

static int fail(const char *what) {
	perror(what);
	return 1;
}

/* One read and one write of `size` bytes at p, with instructions of exactly that width. */
static void access_once(volatile uint8_t *p, int size, uint64_t value) {
	switch (size) {
	case 1: (void)*p; *p = (uint8_t)value; break;
	case 2: (void)*(volatile uint16_t *)p; *(volatile uint16_t *)p = (uint16_t)value; break;
	case 4: (void)*(volatile uint32_t *)p; *(volatile uint32_t *)p = (uint32_t)value; break;
	case 8: (void)*(volatile uint64_t *)p; *(volatile uint64_t *)p = value; break;
	case 16:
		__asm__ volatile("movdqu (%0), %%xmm0\n\tmovdqu %%xmm0, (%0)" : : "r"(p) : "xmm0", "memory");
		break;
	}
}

/* A read and a write of every size at every offset of BAR0's page, until *stop (if given) is set. */
static long sweep(volatile uint8_t *bar0, volatile int *stop) {
	static const int sizes[] = {1, 2, 4, 8, 16};
	long accesses = 0;
	for (unsigned s = 0; s < sizeof sizes / sizeof *sizes; s++)
		for (int offset = 0; offset + sizes[s] <= PAGE; offset++, accesses += 2) {
			if (stop && *stop) return accesses;
			access_once(bar0 + offset, sizes[s], 0x0123456789abcdefULL ^ (uint64_t)offset);
		}
	return accesses;
}

struct sweepers {
	int count;
	pid_t pids[64];
	/* Shared with the sweepers: the parent's stop, and each one's count of whole sweeps. */
	volatile int *stop;
	volatile long *sweeps;
};

/* One sweeping process per online CPU, each pinned to its CPU. */
static int start_sweepers(struct sweepers *sw, volatile uint8_t *bar0) {
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1 || cpus > 64) return fail("online CPUs");
	void *shared = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED) return fail("mmap shared page");
	sw->count = (int)cpus;
	sw->stop = shared;
	sw->sweeps = (volatile long *)shared + 1;
	for (int cpu = 0; cpu < sw->count; cpu++) {
		pid_t pid = fork();
		if (pid < 0) return fail("fork");
		if (pid == 0) {
			cpu_set_t set;
			CPU_ZERO(&set);
			CPU_SET(cpu, &set);
			if (sched_setaffinity(0, sizeof set, &set) < 0 || sched_getcpu() != cpu) _exit(2);
			for (;;) {
				sweep(bar0, sw->stop);
				if (*sw->stop) _exit(0);
				sw->sweeps[cpu]++;
			}
		}
		sw->pids[cpu] = pid;
	}
	return 0;
}

/* Whether every sweeper has finished a whole sweep (on a host where
 * configuration writes are fast, a sweep can take longer than ROUNDS of them). */
static int all_swept(const struct sweepers *sw) {
	for (int cpu = 0; cpu < sw->count; cpu++)
		if (sw->sweeps[cpu] < 1) return 0;
	return 1;
}

/* Stops the sweepers; 0 if each ran on its CPU and finished at least one whole sweep. */
static int stop_sweepers(struct sweepers *sw) {
	*sw->stop = 1;
	long total = 0;
	int failed = 0;
	for (int cpu = 0; cpu < sw->count; cpu++) {
		int status;
		if (waitpid(sw->pids[cpu], &status, 0) < 0) return fail("waitpid");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || sw->sweeps[cpu] < 1) {
			fprintf(stderr, "hammer: the sweeper on CPU %d failed (status %#x, %ld sweeps)\n", cpu, status,
				sw->sweeps[cpu]);
			failed = 1;
		}
		total += sw->sweeps[cpu];
	}
	if (failed) return 1;
	printf("hammer: BAR0 swept %ld times by %d processes, one per CPU, while the configuration changed\n", total,
	       sw->count);
	return 0;
}

static int config_write(int fd, const void *data, int len, int offset) {
	return pwrite(fd, data, len, offset) == len ? 0 : -1;
}

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: hammer SLOT ROUNDS [--then ARGS...]\n");
		return 1;
	}
	char path[128];
	int slot = atoi(argv[1]), rounds = atoi(argv[2]);

	snprintf(path, sizeof path, "/sys/bus/pci/devices/0000:00:%02x.0/resource0", slot);
	int bar_fd = open(path, O_RDWR | O_SYNC);
	if (bar_fd < 0) return fail(path);
	volatile uint8_t *bar0 = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, bar_fd, 0);
	if (bar0 == MAP_FAILED) return fail("mmap resource0");
	uint32_t iv_position = *(volatile uint32_t *)(bar0 + 8);

	long accesses = sweep(bar0, NULL);
	printf("hammer: BAR0: %ld accesses of 1, 2, 4, 8 and 16 bytes at every offset of its page\n", accesses);

	snprintf(path, sizeof path, "/sys/bus/pci/devices/0000:00:%02x.0/config", slot);
	int cfg = open(path, O_RDWR);
	if (cfg < 0) return fail(path);
	uint8_t saved[64];
	if (pread(cfg, saved, sizeof saved, 0) != sizeof saved) return fail("read config");

	int next = 3;
	struct sweepers sweepers = {0};
	if (argc > next && strcmp(argv[next], "--concurrent") == 0) {
		next++;
		if (start_sweepers(&sweepers, bar0)) return 1;
	}

	/* All ones (sizing), RAM, the APIC, the first device's BAR0, past 4 GiB, zero. */
	static const uint32_t values[] = {0xffffffff, 0x00100000, 0xfee00000, 0xc0000000, 0x00000004, 0};
	long writes = 0;
	for (int round = 0; round < rounds || (sweepers.count && !all_swept(&sweepers)); round++) {
		for (int size = 1; size <= 4; size *= 2) {
			for (int offset = 0; offset < 256; offset += size) {
				uint32_t v = values[(offset / size + round) % (sizeof values / sizeof *values)];
				/* Memory decoding on before the BARs move, off now and then. */
				uint16_t command = (offset / size + round) % 7 ? 0x0002 : 0;
				if (offset == 0x10 && config_write(cfg, &command, 2, 4) == 0) writes++;
				if (config_write(cfg, &v, size, offset) < 0) return fail("write config");
				writes++;
			}
		}
	}
	printf("hammer: config: %ld writes of 1, 2 and 4 bytes at every offset\n", writes);
	if (sweepers.count && stop_sweepers(&sweepers)) return 1;

	/* Decoding off, the header back (command register last), decoding as it was. */
	uint16_t off = 0;
	if (config_write(cfg, &off, 2, 4) < 0 || config_write(cfg, saved + 8, sizeof saved - 8, 8) < 0 ||
	    config_write(cfg, saved + 4, 2, 4) < 0)
		return fail("restore config");
	uint32_t again = *(volatile uint32_t *)(bar0 + 8);
	if (again != iv_position) {
		fprintf(stderr, "hammer: IVPosition %#x after the restore, %#x before\n", again, iv_position);
		return 1;
	}
	printf("hammer: restored; IVPosition %u as before\n", again);
	fflush(stdout);

	if (argc > next && strcmp(argv[next], "--then") == 0) {
		argv[next] = "/bin/kvmshm-demo";
		execv(argv[next], argv + next);
		return fail("exec /bin/kvmshm-demo");
	}
	return 0;
}
