/*
 * svvsock: the test guest's vsock echo (busybox has no AF_VSOCK tools).
 *
 *   svvsock PORT [TIMEOUT_S]
 *
 * Listens on AF_VSOCK port PORT (any CID), accepts one connection, reads one line (up to '\n',
 * at most LINE_MAX bytes, or until the peer shuts its side), writes back "svlaunch-echo:<line>"
 * and prints, on stdout (the guest console):
 *   SVREPORT vsock_listening PORT         once the socket listens (the host may connect now)
 *   SVREPORT vsock PORT ok bytes=N        N bytes read, the echo written in full
 *   SVREPORT vsock PORT fail <what>: <errno text>
 * The whole exchange is bounded by TIMEOUT_S (default 60): the guest's init waits for this
 * program before it powers off, so a host that never connects must not hang the guest.
 * Built by scripts/build-guest as a static binary (the initrd has no libc).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define LINE_MAX_BYTES 4096
#define ECHO_PREFIX "svlaunch-echo:"

static char port_text[16];

/* Async-signal-safe: write() only. */
static void on_alarm(int sig)
{
	static const char head[] = "SVREPORT vsock ";
	static const char tail[] = " fail timeout\n";
	(void)sig;
	(void)!write(STDOUT_FILENO, head, sizeof(head) - 1);
	(void)!write(STDOUT_FILENO, port_text, strlen(port_text));
	(void)!write(STDOUT_FILENO, tail, sizeof(tail) - 1);
	_exit(1);
}

static int fail(const char *what)
{
	printf("SVREPORT vsock %s fail %s: %s\n", port_text, what, strerror(errno));
	return 1;
}

/* Write all of buf (send may be partial). */
static int send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	char *end;
	unsigned long port, timeout = 60;
	static char line[sizeof(ECHO_PREFIX) - 1 + LINE_MAX_BYTES];
	char *body = line + sizeof(ECHO_PREFIX) - 1;
	size_t got = 0;
	int lfd, cfd;
	struct sockaddr_vm addr;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: svvsock PORT [TIMEOUT_S]\n");
		return 2;
	}
	errno = 0;
	port = strtoul(argv[1], &end, 10);
	if (errno || *end || end == argv[1] || port > 0xffffffffUL) {
		fprintf(stderr, "svvsock: bad port %s\n", argv[1]);
		return 2;
	}
	if (argc == 3) {
		timeout = strtoul(argv[2], &end, 10);
		if (*end || end == argv[2] || timeout == 0) {
			fprintf(stderr, "svvsock: bad timeout %s\n", argv[2]);
			return 2;
		}
	}
	snprintf(port_text, sizeof(port_text), "%lu", port);
	signal(SIGALRM, on_alarm);
	alarm((unsigned)timeout);

	lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		return fail("socket");
	memset(&addr, 0, sizeof(addr));
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = VMADDR_CID_ANY;
	addr.svm_port = (unsigned)port;
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return fail("bind");
	if (listen(lfd, 1) < 0)
		return fail("listen");
	printf("SVREPORT vsock_listening %s\n", port_text);
	do
		cfd = accept(lfd, NULL, NULL);
	while (cfd < 0 && errno == EINTR);
	if (cfd < 0)
		return fail("accept");
	close(lfd);

	while (got < LINE_MAX_BYTES && (got == 0 || body[got - 1] != '\n')) {
		ssize_t n = read(cfd, body + got, LINE_MAX_BYTES - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail("read");
		if (n == 0)
			break;
		got += (size_t)n;
	}
	if (got == 0) {
		errno = ENODATA;
		return fail("read");
	}
	memcpy(line, ECHO_PREFIX, sizeof(ECHO_PREFIX) - 1);
	if (send_all(cfd, line, sizeof(ECHO_PREFIX) - 1 + got) < 0)
		return fail("write");
	/* Let the host read the echo before our side goes away. */
	shutdown(cfd, SHUT_WR);
	close(cfd);
	printf("SVREPORT vsock %s ok bytes=%zu\n", port_text, got);
	return 0;
}
