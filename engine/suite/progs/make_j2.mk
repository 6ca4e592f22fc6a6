# make_j2.mk: the Makefile of make_j2.sh. A dozen targets, each a few shell steps with
# sleeps writing one file per step (a step run again after a restore writes the same
# file again), joined into out/NAME.txt; a sub-make ($(MAKE): it shares the jobserver)
# builds four more; `all` prints everything and a checksum.
SHELL := /bin/sh
THIS := $(lastword $(MAKEFILE_LIST))
STEPS ?= 4
NAMES := alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima
SUBS := sub1 sub2 sub3 sub4
OUT := $(NAMES:%=out/%.txt)

all: $(OUT) out/sub.txt
	cat $(OUT) out/sub.txt
	cat $(OUT) out/sub.txt | md5sum
	ls out/*.txt | wc -l

out/%.txt: | out
	for i in $$(seq 1 $(STEPS)); do \
		sleep 0.1; \
		printf '%s step %s %s\n' $* $$i $$(printf '%s%s' $* $$i | md5sum | cut -c1-8) > $@.$$i; \
	done
	cat $$(seq -f '$@.%g' 1 $(STEPS)) > $@.tmp && mv $@.tmp $@

out/sub.txt: | out
	+$(MAKE) -f $(THIS) STEPS=$(STEPS) $(SUBS:%=out/%.txt)
	cat $(SUBS:%=out/%.txt) | tr a-z A-Z > $@

out:
	mkdir -p out
