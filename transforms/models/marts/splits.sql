-- Time-ordered leave-one-out, as RecBole's `eval_args: {split: {LS: valid_and_test}, order: TO}`:
-- per user the last event is test and the second-last valid, the rest train. A user with two
-- events gets train + test, a user with one event gets train only (RecBole's
-- _split_index_by_leave_one_out). Held-out cold-item events (zero-shot) get split 'cold' and are
-- left out of the leave-one-out count.
with warm as (
    select
        *,
        row_number() over (partition by user_id order by position desc) as from_end,
        count(*) over (partition by user_id) as n_warm
    from {{ ref('user_events') }}
    where not held_out
)

select
    user_id,
    item_id,
    rating,
    ts,
    event_seq,
    position,
    is_like,
    case
        when n_warm >= 2 and from_end = 1 then 'test'
        when n_warm >= 3 and from_end = 2 then 'valid'
        else 'train'
    end as split
from warm

union all

select user_id, item_id, rating, ts, event_seq, position, is_like, 'cold' as split
from {{ ref('user_events') }}
where held_out
