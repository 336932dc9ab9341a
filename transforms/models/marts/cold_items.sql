select item_id, n_interactions, draw_rank
from {{ ref('int_cold_items') }}
