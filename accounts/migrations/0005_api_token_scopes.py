from django.db import migrations, models


def publish_right_to_scope(apps, schema_editor):
    ApiToken = apps.get_model("accounts", "ApiToken")
    ApiToken.objects.filter(can_publish=True).update(scopes="publish")


def scope_to_publish_right(apps, schema_editor):
    ApiToken = apps.get_model("accounts", "ApiToken")
    ApiToken.objects.filter(scopes__contains="publish").update(can_publish=True)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_external_id_and_ticket_expiry")]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="scopes",
            field=models.CharField(
                blank=True,
                default="",
                help_text="comma-separated: publish, chat, users, presence, connections (PROTOCOL 12)",
                max_length=100,
            ),
        ),
        migrations.RunPython(publish_right_to_scope, scope_to_publish_right),
        migrations.RemoveField(model_name="apitoken", name="can_publish"),
    ]
