/*
 * _dl_find_object for static musl binaries on aarch64.
 *
 * Debian's aarch64 libgcc_eh.a (used as libunwind.a for the musl targets, see
 * cross/install.sh) was built against glibc >= 2.35 and finds a PC's unwind
 * tables with glibc's _dl_find_object(), which musl does not have. This shim
 * implements it with dl_iterate_phdr(), which musl provides (also in static
 * binaries): find the loaded object whose PT_LOAD segment contains the PC and
 * return its PT_GNU_EH_FRAME segment.
 *
 * The struct layout is glibc's generic one (<dlfcn.h>, no eh_dbase/eh_count
 * fields on aarch64); it is what libgcc was compiled against.
 */
#define _GNU_SOURCE
#include <link.h>
#include <stddef.h>
#include <stdint.h>

struct dl_find_object {
	unsigned long long dlfo_flags;
	void *dlfo_map_start;
	void *dlfo_map_end;
	void *dlfo_link_map;
	void *dlfo_eh_frame;
	unsigned long long __dlfo_reserved[7];
};

struct search {
	uintptr_t pc;
	struct dl_find_object *out;
	int found;
};

static int visit(struct dl_phdr_info *info, size_t size, void *data)
{
	struct search *s = data;
	uintptr_t lo = 0, hi = 0, eh = 0;
	int hit = 0;
	(void)size;
	for (size_t i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t start = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type == PT_LOAD) {
			uintptr_t end = start + ph->p_memsz;
			if (s->pc >= start && s->pc < end)
				hit = 1;
			if (lo == 0 || start < lo)
				lo = start;
			if (end > hi)
				hi = end;
		} else if (ph->p_type == PT_GNU_EH_FRAME) {
			eh = start;
		}
	}
	if (!hit)
		return 0;
	s->out->dlfo_flags = 0;
	s->out->dlfo_map_start = (void *)lo;
	s->out->dlfo_map_end = (void *)hi;
	s->out->dlfo_link_map = NULL;
	s->out->dlfo_eh_frame = (void *)eh;
	s->found = 1;
	return 1;
}

int _dl_find_object(void *pc, struct dl_find_object *result)
{
	struct search s = { (uintptr_t)pc, result, 0 };
	dl_iterate_phdr(visit, &s);
	return s.found ? 0 : -1;
}
