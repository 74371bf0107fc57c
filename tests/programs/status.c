/* A static program that is not ours: prints its arguments and exits with
 * the status given as its last argument. Built with musl-gcc by the tests
 * and appended to the image's initramfs as a second cpio archive. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		printf("status.c argv[%d]=%s\n", i, argv[i]);
	return argc > 1 ? atoi(argv[argc - 1]) : 0;
}
