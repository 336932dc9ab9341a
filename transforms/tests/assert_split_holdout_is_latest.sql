-- Time order: every train event precedes the valid event, which precedes the test event.
with by_user as (
    select
        user_id,
        max(position) filter (where split = 'train') as last_train,
        min(position) filter (where split = 'valid') as valid_pos,
        min(position) filter (where split = 'test') as test_pos,
        max(position) filter (where split <> 'cold') as last_warm
    from {{ ref('splits') }}
    group by user_id
)

select *
from by_user
where test_pos is not null and test_pos <> last_warm
   or valid_pos is not null and valid_pos >= test_pos
   or last_train is not null and last_train >= coalesce(valid_pos, test_pos, last_train + 1)
