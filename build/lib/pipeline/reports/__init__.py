"""What a user reads: the report (``report``), the mistakes page (``mistakes``), the backbone comparison's
rows (``backbones``), and the pictures and Markdown table of the evaluate and compare stages
(``figures``). Writers only: they read what the stages wrote and the numbers of the packages below."""
