from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0004_tenant_max_storage_bytes'),
    ]

    operations = [
        migrations.AddField(
            model_name='tenant',
            name='paused_at',
            field=models.DateTimeField(blank=True, help_text='Its waiting work is paused: accepted and kept, none of it published or started until resumed (manage.py tenant_work, jobs.tenant_work).', null=True),
        ),
        migrations.AddField(
            model_name='tenant',
            name='pause_reason',
            field=models.CharField(blank=True, help_text='Why an operator paused it.', max_length=200),
        ),
    ]
