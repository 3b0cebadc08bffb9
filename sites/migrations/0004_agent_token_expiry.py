"""Agent tokens get an expiry. Tokens issued before it existed get the default lifetime from the moment this
migration runs, so a forgotten old token stops working on its own."""

from datetime import timedelta

from django.db import migrations, models
from django.utils import timezone


class Migration(migrations.Migration):
    dependencies = [("sites", "0003_flower_node")]

    operations = [
        migrations.AddField(
            model_name="agenttoken", name="expires_at",
            field=models.DateTimeField(default=timezone.now() + timedelta(days=365),
                                       help_text="From this moment the token is refused (a rotation brings it "
                                                 "forward, to the end of the overlap with the new token)."),
            preserve_default=False,
        ),
    ]
