/* The real-node tier's probe: run with a sandbox Pod's exact spec (image swapped), it reports
 * what the container really is, as one JSON line on stdout and in /dev/termination-log:
 * its uid and gid, whether the root filesystem takes a write, whether a service-account token
 * is mounted, its effective capabilities and no_new_privs, and for each HOST:PORT argument
 * whether a TCP connection opens within 3 s ("open", "refused", "timeout" or an errno), once
 * at start ("connect") and again after the seconds of a first argument "wait=N"
 * ("connectAfter"): a NetworkPolicy controller programs a new Pod's rules a moment after it
 * starts, and both moments are worth knowing. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static char out[8192];
static size_t used;

static void put(const char *fmt, const char *a, const char *b) {
  int n = snprintf(out + used, sizeof out - used, fmt, a, b);
  if (n > 0 && (size_t)n < sizeof out - used) used += (size_t)n;
}

static const char *tcp(const char *target) {
  static char word[64];
  char host[64];
  const char *colon = strrchr(target, ':');
  if (!colon || (size_t)(colon - target) >= sizeof host) return "bad-target";
  memcpy(host, target, (size_t)(colon - target));
  host[colon - target] = 0;
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)atoi(colon + 1));
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return "bad-target";
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return "no-socket";
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  if (rc != 0 && errno == EINPROGRESS) {
    struct pollfd p = {fd, POLLOUT, 0};
    rc = poll(&p, 1, 3000);
    if (rc == 0) { close(fd); return "timeout"; }
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    errno = err;
    rc = err ? -1 : 0;
  }
  close(fd);
  if (rc == 0) return "open";
  if (errno == ECONNREFUSED) return "refused";
  snprintf(word, sizeof word, "errno-%d", errno);
  return word;
}

static void status_field(const char *key, char *value, size_t size) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  snprintf(value, size, "unknown");
  if (!f) return;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, strlen(key)) == 0) {
      char *v = line + strlen(key);
      while (*v == ' ' || *v == '\t') v++;
      v[strcspn(v, "\n")] = 0;
      snprintf(value, size, "%s", v);
    }
  }
  fclose(f);
}

int main(int argc, char **argv) {
  char num[32], num2[32], caps[64], nnp[16];
  snprintf(num, sizeof num, "%u", (unsigned)getuid());
  snprintf(num2, sizeof num2, "%u", (unsigned)getgid());
  put("{\"uid\":%s,\"gid\":%s", num, num2);
  int fd = open("/probe-write", O_CREAT | O_WRONLY, 0600);
  const char *write_root = fd >= 0 ? "ok" : (errno == EROFS ? "EROFS" : strerror(errno));
  if (fd >= 0) close(fd);
  put(",\"rootWrite\":\"%s\"%s", write_root, "");
  struct stat st;
  const char *token = stat("/var/run/secrets/kubernetes.io/serviceaccount/token", &st) == 0 ? "true" : "false";
  put(",\"serviceAccountToken\":%s%s", token, "");
  status_field("CapEff:", caps, sizeof caps);
  status_field("NoNewPrivs:", nnp, sizeof nnp);
  put(",\"capEff\":\"%s\",\"noNewPrivs\":\"%s\"", caps, nnp);
  int first = 1, wait = 0;
  if (argc > 1 && strncmp(argv[1], "wait=", 5) == 0) {
    wait = atoi(argv[1] + 5);
    first = 2;
  }
  put(",\"connect\":{%s%s", "", "");
  for (int i = first; i < argc; i++) {
    put("%s\"%s\":", i > first ? "," : "", argv[i]);
    put("\"%s\"%s", tcp(argv[i]), "");
  }
  put("}%s%s", "", "");
  if (wait > 0) {
    sleep((unsigned)wait);
    put(",\"connectAfter\":{%s%s", "", "");
    for (int i = first; i < argc; i++) {
      put("%s\"%s\":", i > first ? "," : "", argv[i]);
      put("\"%s\"%s", tcp(argv[i]), "");
    }
    put("}%s%s", "", "");
  }
  put("}\n%s%s", "", "");
  fputs(out, stdout);
  fflush(stdout);
  int t = open("/dev/termination-log", O_WRONLY | O_TRUNC);
  if (t >= 0) {
    ssize_t w = write(t, out, used);
    (void)w;
    close(t);
  }
  return 0;
}
