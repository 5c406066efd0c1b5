-- Close the holes at the edges of a build's credits (issue 13).
--
-- A build's credit figures are bigint, like every other credit figure: a command reporting 3 000 000 000 credits
-- overflowed builds.actual_credits (integer), the transaction that ended the build failed, and the build was reaped
-- and never charged.

alter table builds alter column estimated_credits type bigint, alter column actual_credits type bigint;
