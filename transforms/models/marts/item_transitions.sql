-- depends_on: {{ ref('int_touched_users') }}
-- "Often watched next" counts: how often item b came within the next `watched_next_window` train events
-- of the same user after item a, over every pair that ever occurred (item_catalogue keeps the frequent
-- ones). The counts add up over users, so an incremental build does not re-join the whole log: it counts
-- the pairs of the touched users as they are now and as they were published, and emits each pair whose
-- count moved with its new count (0: the pair is gone). Publish replaces those pairs (orchestration:
-- KEYED_MARTS); a whole build counts every pair.
{% set d = delta() %}
{% if d %}
    with published_touched as (
        select * from {{ d.published_schema }}.splits
        where user_id in (select user_id from {{ ref('int_touched_users') }})
    ),

    moved as (
        select item_id, next_item_id, sum(n) as dn
        from (
            select item_id, next_item_id, n from ({{ train_pairs(ref('splits')) }})
            union all
            select item_id, next_item_id, -n from ({{ train_pairs('published_touched') }})
        )
        group by item_id, next_item_id
        having sum(n) <> 0
    )

    select m.item_id, m.next_item_id, coalesce(p.n, 0) + m.dn as n
    from moved as m
    left join {{ d.published_schema }}.item_transitions as p using (item_id, next_item_id)
{% else %}
    {{ train_pairs(ref('splits')) }}
{% endif %}
