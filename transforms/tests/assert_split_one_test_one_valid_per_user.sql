-- Leave-one-out: at most one test and one valid event per user; a valid event implies a test.
select user_id
from {{ ref('splits') }}
group by user_id
having count(*) filter (where split = 'test') > 1
    or count(*) filter (where split = 'valid') > 1
    or (count(*) filter (where split = 'valid') = 1 and count(*) filter (where split = 'test') = 0)
