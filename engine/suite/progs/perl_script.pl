# perl_script: an unmodified perl computing an MD5 chain and a tally of digest prefixes,
# printing one numbered line per step (deterministic after the READY line), so
# the output of a checkpointed, killed and restored run must equal an
# uninterrupted one.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

$| = 1;
my $steps = $ARGV[0] // 40;
my $h = "seed";
my %seen;
print "READY $$\n";
for my $step (0 .. $steps - 1) {
    for (1 .. 2000) {
        $h = md5_hex($h);
    }
    $seen{substr($h, 0, 2)}++;
    printf "step %d %s %d\n", $step, $h, scalar(keys %seen);
    select(undef, undef, undef, 0.1);
}
print "done $h\n";
